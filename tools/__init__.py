"""Tools of the repository that are not part of the package: the documentation's MkDocs hook
and griffe extension."""
