"""Role-based access control: permission vocabulary, built-in roles, principals, scopes, the route guard."""
