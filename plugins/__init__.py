"""Built-in plugins. Each module is registered through the ``callback_gateway`` entry-point group
in pyproject.toml, exactly as a third-party plugin package would be."""
