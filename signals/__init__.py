"""Signals across ads: contacts (phones incl. obfuscated forms, e-mails, URLs, handles), personas and
template clusters (linking), and the HTML cluster report. Never loads a model."""
