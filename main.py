"""Entry point in a checkout: ``python main.py [group=option ...] [key=value ...] [--multirun ...]``.

The same application as the installed ``lsr-adapt train`` (``src/lsr_adapt/app.py``); ``conf/`` is
the package's own config directory (``src/lsr_adapt/conf`` links to it, and the wheel ships it).
"""

from lsr_adapt.app import train_main

if __name__ == "__main__":
    train_main()
