//! Command-line interface: clap definitions and the glue from arguments to the library.
