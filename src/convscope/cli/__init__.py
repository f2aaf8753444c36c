"""The ``convscope`` command line; each command only parses options and calls the library."""
