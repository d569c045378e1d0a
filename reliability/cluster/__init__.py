"""Several daemons on one PostgreSQL database: membership, the leader lease, the shares."""
