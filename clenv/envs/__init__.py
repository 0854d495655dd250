"""The environments. Import them through ``gym.make("clenv/<Name>-v0")``."""
