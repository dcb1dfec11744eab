package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"regexp"
	"slices"
	"sort"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/ocistore/ocistore/store"
)

// Shell completion: "ocistore completion bash|zsh|fish" prints a script
// made from the command table (commands, their flags and the global ones,
// what each flag's value and each argument is); for an argument that is a
// reference the script runs the hidden command "ocistore __complete-refs",
// which lists the references of the layout named on the line.

var completionCmd = &command{
	name:    "completion",
	args:    "bash|zsh|fish",
	summary: "print a shell completion script",
	help: `Prints a script that completes ocistore's commands, their flags and the global
ones, the values of flags that take one of a few words (--format, --log-level)
or a directory (--layout), and references (tags and, after "sha256:",
digests) for the arguments that take one, read from the layout named on the
command line (or $OCISTORE_LAYOUT, or ".").

  bash  source <(ocistore completion bash)
        or save it as ~/.local/share/bash-completion/completions/ocistore
  zsh   ocistore completion zsh > "${fpath[1]}/_ocistore" (compinit loads it)
        or source <(ocistore completion zsh) after compinit
  fish  ocistore completion fish > ~/.config/fish/completions/ocistore.fish`,
	minArgs: 1,
	maxArgs: 1,
	layout:  layoutNone,
}

func init() {
	// Set here: the script is made from the command table, which holds
	// completionCmd.
	completionCmd.run = runCompletion
}

func runCompletion(_ context.Context, a *app, args []string) error {
	sp := newComplSpec()
	switch args[0] {
	case "bash":
		return writeBash(a.stdout, sp)
	case "zsh":
		return writeZsh(a.stdout, sp)
	case "fish":
		return writeFish(a.stdout, sp)
	}
	return usagef("unknown shell %q: want bash, zsh or fish", args[0])
}

var completeRefsCmd = &command{
	name:    "__complete-refs",
	args:    "[PREFIX]",
	summary: "list the layout's references, for shell completion",
	help: `Prints the tags of the layout, one a line, sorted; and its digests too when
PREFIX starts like one ("sha256:..."). The completion scripts run it.`,
	maxArgs: 1,
	hidden:  true,
	layout:  layoutNone,
	run:     runCompleteRefs,
}

func runCompleteRefs(ctx context.Context, a *app, args []string) error {
	prefix := ""
	if len(args) > 0 {
		prefix = args[0]
	}
	return a.withReadStore(ctx, func(s *store.Store) error {
		imgs, err := s.List(ctx)
		if err != nil {
			return err
		}
		var refs []string
		for _, im := range imgs {
			if im.Name != "" {
				refs = append(refs, im.Name)
			}
			if digestPrefix(prefix) {
				refs = append(refs, im.Descriptor.Digest.String())
			}
		}
		sort.Strings(refs)
		for _, r := range slices.Compact(refs) {
			if strings.HasPrefix(r, prefix) {
				fmt.Fprintln(a.stdout, r)
			}
		}
		return nil
	})
}

// digestPrefix reports whether p starts like a digest ("sha", "sha256:ab").
func digestPrefix(p string) bool {
	if p == "" {
		return false
	}
	for _, alg := range []digest.Algorithm{digest.SHA256, digest.SHA384, digest.SHA512} {
		a := alg.String() + ":"
		if strings.HasPrefix(a, p) || strings.HasPrefix(p, a) {
			return true
		}
	}
	return false
}

// argKind is what a positional argument of a command is, read from its
// synopsis (command.args): "REF...", "SRC-LAYOUT", "bash|zsh|fish".
type argKind struct {
	ref     bool     // a reference of the layout (REF, SRC, DST, TAG)
	layout  bool     // a layout directory (SRC-LAYOUT)
	command bool     // a command (help's COMMAND)
	choices []string // one of these words
	repeat  bool     // the last argument, repeated ("REF...")
}

func argKinds(c *command) []argKind {
	var ks []argKind
	for _, tok := range strings.Fields(c.args) {
		var k argKind
		t, repeat := strings.CutSuffix(strings.Trim(tok, "[]"), "...")
		k.repeat = repeat
		switch {
		case strings.Contains(t, "|"):
			k.choices = strings.Split(t, "|")
		case strings.HasSuffix(t, "LAYOUT"):
			k.layout = true
		case t == "COMMAND":
			k.command = true
		default:
			k.ref = true
		}
		ks = append(ks, k)
	}
	return ks
}

// hasLayoutArg reports whether an argument of c is a layout directory.
func hasLayoutArg(c *command) bool {
	return slices.ContainsFunc(argKinds(c), func(k argKind) bool { return k.layout })
}

// The completion model, from the command table.
type (
	complSpec struct {
		globals []complFlag
		cmds    []complCmd // the commands the help lists, then help
	}
	complCmd struct {
		name, summary string
		flags         []complFlag // its own; the global ones apply too
		args          []argKind
	}
	complFlag struct {
		name    string   // as the help writes it: "--layout", "-l"
		usage   string   // what it is
		value   bool     // it takes a value
		dirs    bool     // its value is a directory
		choices []string // its value is one of these
	}
)

// A flag whose usage is "a|b|c" takes one of those words.
var choiceUsage = regexp.MustCompile(`^[a-z0-9-]+(\|[a-z0-9-]+)+$`)

func newComplSpec() complSpec {
	a := &app{getenv: func(string) string { return "" }}
	gfs := flag.NewFlagSet("ocistore", flag.ContinueOnError)
	a.globalFlags(gfs)
	sp := complSpec{globals: complFlags(gfs, nil)}
	sp.globals = append(sp.globals, complFlag{name: "--help", usage: "show the help"}, complFlag{name: "-h", usage: "show the help"})
	global := map[string]bool{}
	gfs.VisitAll(func(f *flag.Flag) { global[f.Name] = true })
	for _, c := range commands {
		if c.hidden {
			continue
		}
		sp.cmds = append(sp.cmds, complCmd{name: c.name, summary: c.summary, flags: complFlags(a.commandFlags(c), global), args: argKinds(c)})
	}
	help := &command{name: "help", args: "[COMMAND]"}
	sp.cmds = append(sp.cmds, complCmd{name: "help", summary: "show help for a command", args: argKinds(help)})
	return sp
}

// complFlags lists the flags of fs but those in skip.
func complFlags(fs *flag.FlagSet, skip map[string]bool) []complFlag {
	var out []complFlag
	fs.VisitAll(func(f *flag.Flag) {
		if skip[f.Name] {
			return
		}
		cf := complFlag{name: dashed(f.Name), usage: f.Usage, value: true}
		if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
			cf.value = false
		}
		if cf.value {
			switch {
			case choiceUsage.MatchString(f.Usage):
				cf.choices = strings.Split(f.Usage, "|")
			case strings.Contains(f.Usage, "directory"):
				cf.dirs = true
			}
		}
		out = append(out, cf)
	})
	return out
}

// spellings are the ways package flag accepts a flag's name: "--name" and
// "-name".
func (f complFlag) spellings() []string {
	n := strings.TrimLeft(f.name, "-")
	return []string{"--" + n, "-" + n}
}

// valueKind is what the scripts complete for the flag's value: "dir",
// "choice WORD...", or "" (anything).
func (f complFlag) valueKind() string {
	switch {
	case f.dirs:
		return "dir"
	case len(f.choices) > 0:
		return "choice " + strings.Join(f.choices, " ")
	}
	return ""
}

// kind is what the scripts complete for the argument: "ref", "ref@K" (a
// reference of the layout that argument K names), "dir", "command" or
// "choice WORD...".
func (k argKind) kind(args []argKind) string {
	switch {
	case k.layout:
		return "dir"
	case k.command:
		return "command"
	case len(k.choices) > 0:
		return "choice " + strings.Join(k.choices, " ")
	}
	for i, o := range args {
		if o.layout {
			return fmt.Sprintf("ref@%d", i)
		}
	}
	return "ref"
}

func (sp complSpec) names() []string {
	var out []string
	for _, c := range sp.cmds {
		out = append(out, c.name)
	}
	return out
}

func flagNames(fs []complFlag) []string {
	var out []string
	for _, f := range fs {
		out = append(out, f.name)
	}
	return out
}

// valueCase is a flag that takes a value: the case patterns that name it
// in the word before the cursor, and the kind of value it takes.
type valueCase struct {
	patterns []string
	kind     string
}

// valueCases lists the flags that take a value, global ones first (named
// after any word), then each command's (after that command), their
// patterns made by pattern (cmd "" for a global flag).
func (sp complSpec) valueCases(pattern func(cmd, flag string) string) []valueCase {
	var out []valueCase
	add := func(cmd string, f complFlag) {
		if !f.value {
			return
		}
		c := valueCase{kind: f.valueKind()}
		for _, s := range f.spellings() {
			c.patterns = append(c.patterns, pattern(cmd, s))
		}
		out = append(out, c)
	}
	for _, f := range sp.globals {
		add("", f)
	}
	for _, c := range sp.cmds {
		for _, f := range c.flags {
			add(c.name, f)
		}
	}
	return out
}

// dirFlagPatterns are the case patterns (each followed by suffix,
// unquoted) of the global flags that name a directory (--layout,
// --shared-blob-dir): the scripts pass them on to __complete-refs.
func (sp complSpec) dirFlagPatterns(suffix string) string {
	var ps []string
	for _, f := range sp.globals {
		if f.dirs {
			for _, s := range f.spellings() {
				ps = append(ps, shQuote(s)+suffix)
			}
		}
	}
	return strings.Join(ps, "|")
}

// shQuote quotes s for sh, bash and zsh.
func shQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// fishQuote quotes s for fish.
func fishQuote(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, "'", `\'`).Replace(s) + "'"
}

// writeShData writes the functions the bash and zsh scripts share (their
// syntax is common to both): the table of commands, flags and arguments.
func writeShData(w io.Writer, sp complSpec) {
	fmt.Fprintf(w, "_ocistore_commands() { echo %s; }\n\n", shQuote(strings.Join(sp.names(), " ")))

	fmt.Fprintln(w, "# _ocistore_flags CMD: the flags of CMD (\"\": the global flags).")
	fmt.Fprintln(w, "_ocistore_flags() {\n\tcase $1 in")
	fmt.Fprintf(w, "\t'') echo %s ;;\n", shQuote(strings.Join(flagNames(sp.globals), " ")))
	for _, c := range sp.cmds {
		if len(c.flags) > 0 {
			fmt.Fprintf(w, "\t%s) echo %s ;;\n", shQuote(c.name), shQuote(strings.Join(flagNames(c.flags), " ")))
		}
	}
	fmt.Fprint(w, "\tesac\n}\n\n")

	fmt.Fprintln(w, "# _ocistore_value CMD FLAG: fails unless FLAG of CMD takes a value; prints")
	fmt.Fprintln(w, "# what the value is: dir, \"choice WORD...\", or nothing (anything).")
	fmt.Fprintln(w, "_ocistore_value() {\n\tcase \"$1 $2\" in")
	for _, c := range sp.valueCases(func(cmd, flag string) string {
		if cmd == "" {
			return "*" + shQuote(" "+flag)
		}
		return shQuote(cmd + " " + flag)
	}) {
		fmt.Fprintf(w, "\t%s) echo %s ;;\n", strings.Join(c.patterns, "|"), shQuote(c.kind))
	}
	fmt.Fprint(w, "\t*) return 1 ;;\n\tesac\n}\n\n")

	fmt.Fprintln(w, "# _ocistore_arg CMD N: what argument N (from 0) of CMD is: ref, ref@K (a")
	fmt.Fprintln(w, "# reference of the layout argument K names), dir, command, \"choice WORD...\".")
	fmt.Fprintln(w, "_ocistore_arg() {\n\tcase $1 in")
	for _, c := range sp.cmds {
		if len(c.args) == 0 {
			continue
		}
		fmt.Fprintf(w, "\t%s)\n\t\tcase $2 in\n", shQuote(c.name))
		for i, k := range c.args {
			pat := fmt.Sprint(i)
			if k.repeat && i == len(c.args)-1 {
				pat = "*"
			}
			fmt.Fprintf(w, "\t\t%s) echo %s ;;\n", pat, shQuote(k.kind(c.args)))
		}
		fmt.Fprintln(w, "\t\tesac ;;")
	}
	fmt.Fprintln(w, "\tesac\n}")
}

// writeBash writes the bash script. It reads the line up to the cursor
// (COMP_LINE, COMP_POINT) and splits it at white space, so that a
// reference with a colon is one word whatever COMP_WORDBREAKS holds; the
// part of each candidate bash does not replace (up to the last word break
// character) is then taken off.
func writeBash(w io.Writer, sp complSpec) error {
	fmt.Fprint(w, `# bash completion for ocistore, generated by "ocistore completion bash".
# Load it with: source <(ocistore completion bash)

`)
	writeShData(w, sp)
	_, err := fmt.Fprintf(w, `
_ocistore() {
	local line=${COMP_LINE:0:COMP_POINT}
	local -a w=()
	read -r -a w <<<"$line"
	if [[ ${#w[@]} -eq 0 || $line == *[[:space:]] ]]; then
		w+=("")
	fi
	local n=$(( ${#w[@]} - 1 ))
	local cur=${w[n]} prog=${w[0]/#\~/$HOME} cmd= vflag= word kind= pre=
	local -a glob=() pos=() cands=()
	local i=1
	while (( i < n )); do
		word=${w[i]}
		if [[ $word == -- ]]; then
			pos+=("${w[@]:i+1:n-i-1}")
			break
		elif [[ $word == -?* ]]; then
			if [[ $word != *=* ]] && _ocistore_value "$cmd" "$word" >/dev/null; then
				if (( i + 1 == n )); then
					vflag=$word
					break
				fi
				case $word in
				%[1]s) glob+=("$word" "${w[i+1]/#\~/$HOME}") ;;
				esac
				(( i++ ))
			else
				case $word in
				%[2]s) glob+=("$word") ;;
				esac
			fi
		elif [[ -z $cmd ]]; then
			cmd=$word
		else
			pos+=("$word")
		fi
		(( i++ ))
	done

	if [[ -n $vflag ]]; then
		kind=$(_ocistore_value "$cmd" "$vflag")
	elif [[ $cur == -?*=* ]]; then
		pre=${cur%%%%=*}=
		kind=$(_ocistore_value "$cmd" "${cur%%%%=*}") || kind=
	elif [[ $cur == -* ]]; then
		kind="choice $(_ocistore_flags '')"
		[[ -n $cmd ]] && kind+=" $(_ocistore_flags "$cmd")"
	elif [[ -z $cmd ]]; then
		kind=command
	else
		kind=$(_ocistore_arg "$cmd" "${#pos[@]}")
	fi

	local v
	case $kind in
	dir)
		compopt -o filenames 2>/dev/null
		while IFS= read -r v; do
			cands+=("$pre$v")
		done < <(compgen -d -- "${cur#"$pre"}")
		;;
	command)
		read -r -a cands <<<"$(_ocistore_commands)"
		;;
	ref|ref@*)
		local -a from=("${glob[@]}")
		if [[ $kind == ref@* ]]; then
			from=(--layout "${pos[${kind#ref@}]}")
		fi
		while IFS= read -r v; do
			cands+=("$v")
		done < <("$prog" "${from[@]}" __complete-refs -- "$cur" 2>/dev/null)
		;;
	choice\ *)
		for v in ${kind#choice }; do
			cands+=("$pre$v")
		done
		;;
	esac

	COMPREPLY=()
	for v in "${cands[@]}"; do
		[[ $v == "$cur"* ]] && COMPREPLY+=("$v")
	done
	# bash replaces only the part of the word after its last word break
	# character (":" and "=" among them): take the rest off.
	local j
	for (( j = ${#cur} - 1; j >= 0; j-- )); do
		if [[ $COMP_WORDBREAKS == *"${cur:j:1}"* ]]; then
			COMPREPLY=("${COMPREPLY[@]/#"${cur:0:j+1}"}")
			break
		fi
	done
}

complete -F _ocistore ocistore
`, sp.dirFlagPatterns(""), sp.dirFlagPatterns("=*"))
	return err
}

// writeZsh writes the zsh script: the data functions of bash, and a
// completion function on zsh's words and CURRENT.
func writeZsh(w io.Writer, sp complSpec) error {
	fmt.Fprint(w, `#compdef ocistore
# zsh completion for ocistore, generated by "ocistore completion zsh".
# Save it as _ocistore in a directory of $fpath (compinit loads it), or
# source <(ocistore completion zsh) after compinit.
compdef _ocistore ocistore

`)
	writeShData(w, sp)
	fmt.Fprintln(w, "\n_ocistore_describe_commands() {\n\tlocal -a cmds\n\tcmds=(")
	for _, c := range sp.cmds {
		fmt.Fprintf(w, "\t\t%s\n", shQuote(c.name+":"+c.summary))
	}
	fmt.Fprintln(w, "\t)\n\t_describe -t commands 'ocistore command' cmds\n}")
	_, err := fmt.Fprintf(w, `
_ocistore() {
	local -a w glob pos
	w=("${(@)words[1,CURRENT]}")
	local n=${#w} cur=${words[CURRENT]} cmd= vflag= word kind= pre=
	local prog=${w[1]/#\~/$HOME}
	integer i=2
	while (( i < n )); do
		word=${w[i]}
		if [[ $word == -- ]]; then
			pos+=("${(@Q)w[i+1,n-1]}")
			break
		elif [[ $word == -?* ]]; then
			if [[ $word != *=* ]] && _ocistore_value "$cmd" "$word" >/dev/null; then
				if (( i + 1 == n )); then
					vflag=$word
					break
				fi
				case $word in
				(%[1]s) glob+=("$word" "${${(Q)w[i+1]}/#\~/$HOME}") ;;
				esac
				(( i++ ))
			else
				case $word in
				(%[2]s) glob+=("${(Q)word}") ;;
				esac
			fi
		elif [[ -z $cmd ]]; then
			cmd=$word
		else
			pos+=("${(Q)word}")
		fi
		(( i++ ))
	done

	if [[ -n $vflag ]]; then
		kind=$(_ocistore_value "$cmd" "$vflag")
	elif [[ $cur == -?*=* ]]; then
		pre=${cur%%%%=*}=
		kind=$(_ocistore_value "$cmd" "${cur%%%%=*}") || kind=
	elif [[ $cur == -* ]]; then
		local -a fl
		fl=(${=$(_ocistore_flags '')})
		[[ -n $cmd ]] && fl+=(${=$(_ocistore_flags "$cmd")})
		compadd -- $fl
		return
	elif [[ -z $cmd ]]; then
		_ocistore_describe_commands
		return
	else
		kind=$(_ocistore_arg "$cmd" ${#pos})
	fi

	[[ -n $pre ]] && compset -P '*='
	case $kind in
	(dir) _files -/ ;;
	(command) _ocistore_describe_commands ;;
	(ref) compadd -- ${(f)"$($prog "${glob[@]}" __complete-refs -- "${(Q)cur}" 2>/dev/null)"} ;;
	(ref@*) compadd -- ${(f)"$($prog --layout "${pos[$(( ${kind#ref@} + 1 ))]}" __complete-refs -- "${(Q)cur}" 2>/dev/null)"} ;;
	(choice\ *) compadd -- ${=kind#choice } ;;
	esac
}

if [[ $funcstack[1] == _ocistore ]]; then
	_ocistore "$@"
fi
`, sp.dirFlagPatterns(""), sp.dirFlagPatterns("=*"))
	return err
}

// writeFish writes the fish script: one function that prints the
// candidates (with a description for commands and flags) for the token
// under the cursor; fish filters them.
func writeFish(w io.Writer, sp complSpec) error {
	fmt.Fprint(w, `# fish completion for ocistore, generated by "ocistore completion fish".
# Save it as ~/.config/fish/completions/ocistore.fish

function __ocistore_commands
`)
	for _, c := range sp.cmds {
		fmt.Fprintf(w, "\tprintf '%%s\\t%%s\\n' %s %s\n", fishQuote(c.name), fishQuote(c.summary))
	}
	fmt.Fprint(w, "end\n\n# __ocistore_flags CMD: the flags of CMD (\"\": the global flags).\nfunction __ocistore_flags --argument-names cmd\n\tswitch \"$cmd\"\n")
	writeFishFlags := func(pat string, fs []complFlag) {
		fmt.Fprintf(w, "\t\tcase %s\n", pat)
		for _, f := range fs {
			fmt.Fprintf(w, "\t\t\tprintf '%%s\\t%%s\\n' %s %s\n", fishQuote(f.name), fishQuote(f.usage))
		}
	}
	writeFishFlags("''", sp.globals)
	for _, c := range sp.cmds {
		if len(c.flags) > 0 {
			writeFishFlags(fishQuote(c.name), c.flags)
		}
	}
	fmt.Fprint(w, "\tend\nend\n\n")

	fmt.Fprint(w, "# __ocistore_value CMD FLAG: fails unless FLAG of CMD takes a value; prints\n# what the value is: dir, \"choice WORD...\", or nothing (anything).\n")
	fmt.Fprint(w, "function __ocistore_value --argument-names cmd flag\n\tswitch \"$cmd $flag\"\n")
	for _, c := range sp.valueCases(func(cmd, flag string) string {
		if cmd == "" {
			return fishQuote("* " + flag)
		}
		return fishQuote(cmd + " " + flag)
	}) {
		fmt.Fprintf(w, "\t\tcase %s\n\t\t\techo %s\n", strings.Join(c.patterns, " "), fishQuote(c.kind))
	}
	fmt.Fprint(w, "\t\tcase '*'\n\t\t\treturn 1\n\tend\nend\n\n")

	fmt.Fprint(w, "# __ocistore_arg CMD N: what argument N (from 0) of CMD is: ref, ref@K (a\n# reference of the layout argument K names), dir, command, \"choice WORD...\".\n")
	fmt.Fprint(w, "function __ocistore_arg --argument-names cmd n\n\tswitch \"$cmd\"\n")
	for _, c := range sp.cmds {
		if len(c.args) == 0 {
			continue
		}
		fmt.Fprintf(w, "\t\tcase %s\n\t\t\tswitch $n\n", fishQuote(c.name))
		for i, k := range c.args {
			pat := fishQuote(fmt.Sprint(i))
			if k.repeat && i == len(c.args)-1 {
				pat = "'*'"
			}
			fmt.Fprintf(w, "\t\t\t\tcase %s\n\t\t\t\t\techo %s\n", pat, fishQuote(k.kind(c.args)))
		}
		fmt.Fprint(w, "\t\t\tend\n")
	}
	fmt.Fprint(w, "\tend\nend\n")

	var dirFlags, dirFlagsEq []string
	for _, f := range sp.globals {
		if f.dirs {
			for _, s := range f.spellings() {
				dirFlags = append(dirFlags, fishQuote(s))
				dirFlagsEq = append(dirFlagsEq, fishQuote(s+"=*"))
			}
		}
	}
	_, err := fmt.Fprintf(w, `
function __ocistore_complete
	set -l toks (commandline -opc)
	set -l cur (commandline -ct)
	set -l prog $toks[1]
	set -l n (count $toks)
	set -l cmd ''
	set -l vflag ''
	set -l glob
	set -l pos
	set -l i 2
	while test $i -le $n
		set -l word $toks[$i]
		if test "$word" = --
			set i (math $i + 1)
			while test $i -le $n
				set -a pos $toks[$i]
				set i (math $i + 1)
			end
			break
		else if string match -qr -- '^-.' $word
			if not string match -q -- '*=*' $word; and __ocistore_value "$cmd" $word >/dev/null
				if test $i -eq $n
					set vflag $word
					break
				end
				switch $word
					case %[1]s
						set -a glob $word $toks[(math $i + 1)]
				end
				set i (math $i + 1)
			else
				switch $word
					case %[2]s
						set -a glob $word
				end
			end
		else if test -z "$cmd"
			set cmd $word
		else
			set -a pos $word
		end
		set i (math $i + 1)
	end

	set -l kind ''
	set -l pre ''
	if test -n "$vflag"
		set kind (__ocistore_value "$cmd" $vflag)
	else if string match -qr -- '^-[^=]+=' $cur
		set pre (string replace -r -- '=.*' '=' $cur)
		set kind (__ocistore_value "$cmd" (string replace -r -- '=.*' '' $cur)); or set kind ''
	else if string match -q -- '-*' $cur
		__ocistore_flags ''
		test -n "$cmd"; and __ocistore_flags "$cmd"
		return
	else if test -z "$cmd"
		__ocistore_commands
		return
	else
		set kind (__ocistore_arg "$cmd" (count $pos))
	end

	switch "$kind"
		case dir
			set -l val $cur
			if test -n "$pre"
				set val (string sub -s (math (string length -- $pre) + 1) -- $cur)
			end
			for d in (__fish_complete_directories "$val" '')
				echo $pre$d
			end
		case command
			__ocistore_commands
		case 'ref@*'
			set -l k (math (string replace -- 'ref@' '' $kind) + 1)
			$prog --layout $pos[$k] __complete-refs -- $cur 2>/dev/null
		case ref
			$prog $glob __complete-refs -- $cur 2>/dev/null
		case 'choice *'
			for c in (string split ' ' (string replace -- 'choice ' '' $kind))
				echo $pre$c
			end
	end
end

complete -c ocistore -e
complete -c ocistore -f -a '(__ocistore_complete)'
`, strings.Join(dirFlags, " "), strings.Join(dirFlagsEq, " "))
	return err
}
