"""The registry: sole owner of the PostgreSQL schema; ingests trainer streams and answers queries."""
