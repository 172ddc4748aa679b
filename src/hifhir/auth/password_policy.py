"""The password policy applied when a password is chosen (user creation, password change — CLI and API); users
loaded with a ready hash (demo, tests) are not checked."""

from __future__ import annotations

DEFAULT_MIN_LENGTH = 12
MAX_LENGTH = 200  # login reads at most this many characters
LONG_ENOUGH = 16  # a passphrase this long needs no mix of character classes
MIN_CLASSES = 3

# The most used passwords of public breach lists, of which the policy's length admits some; compared ignoring case.
COMMON_PASSWORDS = frozenset({
    "123456789012", "1234567890123", "12345678901234", "123456789abc", "1q2w3e4r5t6y", "1qaz2wsx3edc",
    "1qaz2wsx3edc4rfv", "abc123456789", "administrator", "administrator1", "changeme1234", "iloveyou1234",
    "letmein12345", "openimis1234", "openimis12345", "openimis123456", "p@ssw0rd1234", "passw0rd1234",
    "password1234", "password12345", "password123456", "password1234567", "password12345678", "password!234",
    "qwerty123456", "qwertyuiop12", "qwertyuiop123", "qwertyuiopasdf", "welcome12345", "welcome123456",
    "zaq12wsxcde3", "password123!", "password1234!", "welcome123!!",
    "admin@123456", "admin1234567", "admin12345678", "qwerty1234567", "asdfghjkl123", "1234qwerasdf",
    "football1234", "sunshine1234", "superman1234", "trustno11234", "monkey123456", "dragon123456",
    "princess1234", "baseball1234", "master123456", "shadow123456", "michael12345", "jennifer1234",
    "computer1234", "internet1234", "whatever1234", "starwars1234", "hello1234567", "freedom12345",
    "aaaaaaaaaaaa", "111111111111", "000000000000", "abcdefghijkl", "abcdefgh1234", "abcd12345678",
    "correcthorsebatterystaple", "passwordpassword", "qwertyqwerty", "1234567890qwerty",
})


class WeakPassword(ValueError):
    """The password breaks the policy; the message lists what to change."""


def check_password(password: str, username: str, min_length: int = DEFAULT_MIN_LENGTH) -> None:
    problems = []
    if len(password) < min_length:
        problems.append(f"be at least {min_length} characters long")
    if len(password) > MAX_LENGTH:
        problems.append(f"be at most {MAX_LENGTH} characters long")
    lowered = password.lower()
    name = username.lower()
    if name and (lowered == name or (len(name) >= 3 and name in lowered)):
        problems.append("not contain the user name")
    if lowered in COMMON_PASSWORDS:
        problems.append("not be a common password")
    classes = sum((any(c.islower() for c in password), any(c.isupper() for c in password),
                   any(c.isdigit() for c in password), any(not c.isalnum() for c in password)))
    if classes < MIN_CLASSES and len(password) < LONG_ENOUGH:
        problems.append(f"mix {MIN_CLASSES} of lower case, upper case, digits and symbols (or be {LONG_ENOUGH} "
                        "characters or more)")
    if problems:
        raise WeakPassword("password refused: it must " + ", and ".join(problems))
