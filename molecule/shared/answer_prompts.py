"""Runs a command on a pseudo-terminal and answers its confirmation prompts, as an operator would.

    answer_prompts.py --log run.log --answer yes --answer no -- ansible-playbook stage4.yml ...

ansible.builtin.pause only waits for an answer on a terminal, and it flushes what was typed before
it starts reading, which can be just after its prompt is printed (the terminal echoes what it then
discards). So an answer is typed whenever the terminal has been quiet for a moment after its
prompt, until the play goes on to its next task. Exits with the command's exit code; the log holds everything the command printed.
"""
import argparse
import fcntl
import os
import pty
import re
import select
import subprocess
import sys
import termios

PROMPT = re.compile(rb"Type yes to apply \S+; anything else stops the run here\s*:")
QUIET_S = 1.0  # the prompt is printed, pause is reading: time to type


def own_terminal():
    """In the child: a new session whose controlling terminal is the pty (pause sets its modes)."""
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", required=True)
    parser.add_argument("--answer", action="append", default=[], help="the answer to the next prompt")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command

    controller, terminal = pty.openpty()
    process = subprocess.Popen(command, stdin=terminal, stdout=terminal, stderr=terminal,
                               preexec_fn=own_terminal)
    os.close(terminal)
    answers = list(args.answer)
    output = bytearray()
    searched_up_to = 0
    typing = None  # the answer typed at the current prompt, until pause echoes it
    while True:
        ready, _, _ = select.select([controller], [], [], QUIET_S)
        if not ready:
            if typing is not None:  # quiet: pause is waiting for input (again, if it flushed it)
                os.write(controller, typing + b"\r")
            continue
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the command closed the terminal
            break
        if not chunk:
            break
        output += chunk
        if typing is not None and b"TASK [" in output[searched_up_to:]:
            typing = None  # the play went on: pause has the answer
        prompt = PROMPT.search(output, searched_up_to)
        if prompt:
            searched_up_to = prompt.end()
            # No answer left: an empty line, which the playbook treats as a decline.
            typing = (answers.pop(0) if answers else "").encode()
    returncode = process.wait()
    with open(args.log, "wb") as handle:
        handle.write(bytes(output))
    sys.exit(returncode)


if __name__ == "__main__":
    main()
