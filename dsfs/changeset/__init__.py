"""Change-sets: the manifest format, packing files into zip chunks and reading them back."""
