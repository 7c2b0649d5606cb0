"""The posts API: the FastAPI app a tutorial grows into, on a database dbkit set up."""
