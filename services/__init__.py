"""The four stages of the cascade, one package each (model, train, export, server)."""
