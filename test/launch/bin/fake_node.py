#!/usr/bin/env python3
"""
A stand-in node for the launch runner's tests: prints its argv, then waits for a signal.

The first argument picks a behaviour: ``normal`` (exit 0 on SIGINT), ``stubborn`` (ignores
SIGINT, so only SIGTERM/SIGKILL stop it), ``crash`` (exits with code 3 after 0.3 s) or
``chatty`` (as normal, and prints a line every 0.05 s).
"""
import json
import signal
import sys
import time


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] != '--ros-args' else 'normal'
    if mode == 'stubborn':
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        print('argv: ' + json.dumps(sys.argv[1:]), flush=True)
        if mode == 'crash':
            time.sleep(0.3)
            print('crashing now', flush=True)
            return 3
        while True:
            time.sleep(0.05)
            if mode == 'chatty':
                print('still here', flush=True)
    except KeyboardInterrupt:
        print('stopping on SIGINT', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
