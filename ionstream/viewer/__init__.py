"""`ionstream view`: a Qt-free model and receiver (`model`) and the Qt window (`window`)."""
