pytest_plugins = ["s3servers"]
