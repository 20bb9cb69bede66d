"""Sign-in, server-side sessions, second factor, API tokens, and the route guard."""
