"""Ground floor shared by every package: typed settings and the exception tree."""
