"""Mail: the outbox sender, alert decisions, weekly reports and their templates."""
