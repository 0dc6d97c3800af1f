"""Print the bash completion for `hive`, generated from build_agent.cli's parser.

    PYTHONPATH=. python3 packaging/completion.py > hive.bash-completion

install.sh and scripts/make-release (the Debian package) run it against the code they install,
so every subcommand and option the parser has, including ones added later, is completed without
anyone editing a completion file.  Completes: subcommands (nested ones too), their options, the
choices of options and positionals that have them, and file names after options that take a file.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field

# Options whose value is a file name (by destination or metavar).
FILE_HINTS = re.compile(r"(config|file|path|dir|policy)$", re.I)


@dataclass
class Level:
    """One command level: `hive`, `hive task`, ...: what may follow it."""
    path: str                                        # "" for hive itself, "task", "task add"
    commands: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)
    value_options: dict[str, str] = field(default_factory=dict)  # option -> "file" or choices
    positional_choices: list[str] = field(default_factory=list)


def _subparsers(parser: argparse.ArgumentParser):
    for action in parser._actions:  # argparse has no public API for this
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def levels(parser: argparse.ArgumentParser, path: str = "") -> list[Level]:
    """Every command level of PARSER, depth first."""
    level = Level(path)
    found = [level]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                level.commands.append(name)
                found += levels(sub, f"{path} {name}".strip())
        elif action.option_strings:
            level.options += action.option_strings
            if action.nargs != 0:
                if action.choices:
                    value = " ".join(str(c) for c in action.choices)
                elif FILE_HINTS.search(action.dest) or FILE_HINTS.search(str(action.metavar or "")):
                    value = "file"
                else:
                    value = ""
                for option in action.option_strings:
                    level.value_options[option] = value
        elif action.choices:
            level.positional_choices += [str(c) for c in action.choices]
    return found


def _words(items) -> str:
    for item in items:
        if not re.fullmatch(r"[A-Za-z0-9_.:+/@=,-]+", item):
            raise ValueError(f"cannot complete {item!r}: only plain words are supported")
    return " ".join(items)


def render(parser: argparse.ArgumentParser) -> str:
    commands, options, choices, values = [], [], [], []
    for level in levels(parser):
        key = f'"{level.path}"'
        if level.commands:
            commands.append(f"        {key}) words='{_words(level.commands)}' ;;")
        if level.positional_choices:
            choices.append(f"        {key}) words='{_words(level.positional_choices)}' ;;")
        options.append(f"        {key}) words='{_words(level.options)}' ;;")
        for option, value in sorted(level.value_options.items()):
            _words([option] + value.split())
            values.append(f'        "{level.path}|{option}") value=\'{value}\' ;;')
    return TEMPLATE.format(commands="\n".join(commands), options="\n".join(options),
                           choices="\n".join(choices) or "        *) ;;",
                           values="\n".join(values))


TEMPLATE = r"""# bash completion for hive (Build Hive).
# Generated from build_agent/cli.py's parser by packaging/completion.py: do not edit; it is
# rebuilt whenever install.sh or the Debian package installs a new release.

# _hive_commands PATH: the subcommands of `hive PATH` (none if it has none).
_hive_commands() {{
    local words=''
    case $1 in
{commands}
    esac
    printf '%s' "$words"
}}

# _hive_choices PATH: the values its positional arguments may take, where they are fixed.
_hive_choices() {{
    local words=''
    case $1 in
{choices}
    esac
    printf '%s' "$words"
}}

# _hive_options PATH: the options of `hive PATH`.
_hive_options() {{
    local words=''
    case $1 in
{options}
    esac
    printf '%s' "$words"
}}

# _hive_value PATH OPTION: exit 1 if OPTION takes no value; else print 'file', its choices or ''.
_hive_value() {{
    local value
    case "$1|$2" in
{values}
        *) return 1 ;;
    esac
    printf '%s' "$value"
}}

_hive() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} path='' word value sub i option='' prefix=''
    COMPREPLY=()
    # The words before the cursor: subcommands deepen the path; an option's value is skipped
    # (bash splits --config=FILE into three words when '=' is in COMP_WORDBREAKS).
    for ((i = 1; i < COMP_CWORD; i++)); do
        word=${{COMP_WORDS[i]}}
        if [[ $word == -* ]]; then
            if [[ $word != *=* ]] && _hive_value "$path" "$word" >/dev/null; then
                [[ ${{COMP_WORDS[i + 1]:-}} != '=' ]] || ((i++))
                ((i++))
            fi
            continue
        fi
        for sub in $(_hive_commands "$path"); do
            if [[ $word == "$sub" ]]; then
                path="${{path:+$path }}$word"
                break
            fi
        done
    done
    # Completing an option's value?
    if [[ $cur == -*=* ]]; then
        option=${{cur%%=*}}; prefix="$option="; cur=${{cur#*=}}
    elif [[ $cur == '=' ]] && ((COMP_CWORD > 1)); then
        option=${{COMP_WORDS[COMP_CWORD - 1]}}; cur=''
    elif ((COMP_CWORD > 2)) && [[ ${{COMP_WORDS[COMP_CWORD - 1]}} == '=' ]]; then
        option=${{COMP_WORDS[COMP_CWORD - 2]}}
    elif ((COMP_CWORD > 1)); then
        option=${{COMP_WORDS[COMP_CWORD - 1]}}
    fi
    if [[ $option == -* ]] && value=$(_hive_value "$path" "$option"); then
        if [[ $value == file ]]; then
            mapfile -t COMPREPLY < <(compgen -f -- "$cur")
            compopt -o filenames 2>/dev/null || true
        elif [[ -n $value ]]; then
            mapfile -t COMPREPLY < <(compgen -W "$value" -- "$cur")
        fi
        [[ -z $prefix ]] || COMPREPLY=("${{COMPREPLY[@]/#/$prefix}}")
        return 0
    fi
    if [[ $cur == -* ]]; then
        mapfile -t COMPREPLY < <(compgen -W "$(_hive_options "$path")" -- "$cur")
    else
        mapfile -t COMPREPLY < <(compgen -W "$(_hive_commands "$path") $(_hive_choices "$path")" -- "$cur")
    fi
    return 0
}}

complete -F _hive hive
"""


def main() -> int:
    from build_agent.cli import build_parser
    sys.stdout.write(render(build_parser()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
