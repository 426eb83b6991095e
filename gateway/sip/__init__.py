"""The SIP engine adapter: the only package that imports pjsua2."""
