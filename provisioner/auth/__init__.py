"""Users, their roles and API tokens; who may do what, with every refusal audited."""
