"""Container runtime glue used by the array script (installed as autoexp.apptainer)."""
