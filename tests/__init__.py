import os

# Tests never read a developer's .env (make run creates one): only explicit settings count.
os.environ["CHAT_ENV_FILE"] = ""
