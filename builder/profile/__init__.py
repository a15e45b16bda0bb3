"""The profile room: YAML → validated, typed `Profile`. `Profile` and `load_profile` are its front door."""

from builder.profile.load import PROFILES_DIR, load_profile
from builder.profile.schema import Profile

__all__ = ["PROFILES_DIR", "Profile", "load_profile"]
