"""Teachers: the model interface generators and filters ask, its backends, and the call cache."""
