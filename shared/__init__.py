"""The routing domain shared by the web tier and the workers: no web or queue framework here."""
