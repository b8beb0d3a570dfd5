from tests.notify.smtp import module_smtp_sink, smtp_sink

__all__ = ["module_smtp_sink", "smtp_sink"]
