// Command podsnapshot is the operator CLI of podsnapshot. It reads the shim's config
// (/etc/containerd/podsnapshot.toml) and the policy directory it names, and works on the
// snapshots in every store a PodSnapshotStorageConfig there points to:
//
//	podsnapshot [--config FILE] [--policy-dir DIR] [--debug] COMMAND [flags] [args]
//
//	ls           list snapshots (NAME STATUS POLICY AGE, as kubectl prints PodSnapshots)
//	inspect      show one snapshot: its PodSnapshot view and its manifest
//	rm           delete snapshots from storage
//	gc           apply the policies' retention rules; delete old Failed snapshots
//	policies     show the policies that loaded, and every error of the policy directory
//	checkpoint   snapshot a container's pod now, through containerd
//	version      print the version
//
// Exit status: 0 on success, 1 when a command failed (the reason on stderr, prefixed with
// "podsnapshot COMMAND:"), 2 for a usage error.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/podsnapshot/podsnapshot/internal/config"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := newCLI(os.Stdout, os.Stderr).main(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}

// run is the whole program without the process around it: it runs args (without the
// program name) and returns the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	return newCLI(stdout, stderr).main(context.Background(), args)
}

// command is one subcommand.
type command struct {
	name    string
	usage   string // arguments after the name, e.g. "[-n NAMESPACE | -A] [-o wide|json|yaml]"
	summary string // one line for the command list
	help    string // paragraphs printed by -h after the usage line
	run     func(ctx context.Context, c *cli, args []string) error
}

// commands are the subcommands in the order the usage text lists them.
var commands []*command

func init() {
	commands = []*command{lsCommand, inspectCommand, rmCommand, gcCommand, policiesCommand, checkpointCommand, versionCommand}
}

func lookup(name string) *command {
	for _, cmd := range commands {
		if cmd.name == name {
			return cmd
		}
	}
	return nil
}

// cli is one invocation: its output streams, clock and global flags.
type cli struct {
	stdout, stderr io.Writer
	// now is the clock (ages, retention).
	now func() time.Time
	// log receives the storage backends' messages; on stderr.
	log *logrus.Logger

	configPath string // --config
	configSet  bool   // --config given explicitly: the file must exist
	policyDir  string // --policy-dir, overrides the config's policy_dir
	debug      bool   // --debug

	cmd     *command          // the command running, for messages
	aliases map[string]string // the running command's flag aliases: long name -> short name
}

func newCLI(stdout, stderr io.Writer) *cli {
	log := logrus.New()
	log.SetOutput(stderr)
	log.SetLevel(logrus.WarnLevel)
	return &cli{stdout: stdout, stderr: stderr, now: time.Now, log: log}
}

// errHelp is returned by a command that printed its help on -h: exit status 0.
var errHelp = errors.New("help requested")

// usageError is a wrong invocation: exit status 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return &usageError{fmt.Sprintf(format, args...)} }

const globalUsage = `Usage: podsnapshot [global flags] COMMAND [flags] [args]

Pod snapshots for containerd + gVisor: lists and manages the snapshots in the stores of
the node's policy directory, and asks containerd to checkpoint a pod.

Commands:
%s
Global flags:
  --config FILE      shim config to read (default %s;
                     when the default file is missing, built-in defaults apply)
  --policy-dir DIR   policy directory, instead of the config's policy_dir
  --debug            log storage backend details to stderr

Run 'podsnapshot COMMAND -h' for a command's flags.
`

func (c *cli) printUsage(w io.Writer) {
	var b strings.Builder
	for _, cmd := range commands {
		fmt.Fprintf(&b, "  %-12s %s\n", cmd.name, cmd.summary)
	}
	fmt.Fprintf(w, globalUsage, b.String(), config.DefaultPath)
}

// main parses the global flags, runs the command and maps its error to an exit status.
func (c *cli) main(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("podsnapshot", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&c.configPath, "config", config.DefaultPath, "")
	fs.StringVar(&c.policyDir, "policy-dir", "", "")
	fs.BoolVar(&c.debug, "debug", false, "")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			c.printUsage(c.stdout)
			return 0
		}
		fmt.Fprintf(c.stderr, "podsnapshot: %v\nRun 'podsnapshot -h' for usage.\n", err)
		return 2
	}
	fs.Visit(func(f *flag.Flag) { c.configSet = c.configSet || f.Name == "config" })
	if c.debug {
		c.log.SetLevel(logrus.DebugLevel)
	}
	rest := fs.Args()
	if len(rest) == 0 {
		c.printUsage(c.stderr)
		return 2
	}
	if rest[0] == "help" {
		if len(rest) > 1 && lookup(rest[1]) != nil {
			rest = []string{rest[1], "-h"}
		} else {
			c.printUsage(c.stdout)
			return 0
		}
	}
	c.cmd = lookup(rest[0])
	if c.cmd == nil {
		fmt.Fprintf(c.stderr, "podsnapshot: unknown command %q\nRun 'podsnapshot -h' for usage.\n", rest[0])
		return 2
	}
	return c.exit(c.cmd.run(ctx, c, rest[1:]))
}

// exit prints err, one "podsnapshot COMMAND: " line per line of it, and returns the exit
// status: 0 for nil or errHelp, 2 for a usageError, else 1.
func (c *cli) exit(err error) int {
	if err == nil || errors.Is(err, errHelp) {
		return 0
	}
	prefix := "podsnapshot " + c.cmd.name + ": "
	for _, line := range strings.Split(strings.TrimRight(err.Error(), "\n"), "\n") {
		fmt.Fprintln(c.stderr, prefix+line)
	}
	var ue *usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(c.stderr, "Run 'podsnapshot %s -h' for usage.\n", c.cmd.name)
		return 2
	}
	return 1
}

// flagSet returns an empty flag set for the running command; parse it with c.parse.
func (c *cli) flagSet() *flag.FlagSet {
	fs := flag.NewFlagSet(c.cmd.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return fs
}

// parse parses args with flags and positional arguments in any order ("--" ends the
// flags) and returns the positional ones. On -h it prints the command's help to stdout and
// returns errHelp; a bad flag is a usageError.
func (c *cli) parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				c.printHelp(fs)
				return nil, errHelp
			}
			return nil, &usageError{err.Error()}
		}
		rest := fs.Args()
		consumed := len(args) - len(rest)
		if len(rest) == 0 {
			return pos, nil
		}
		if consumed > 0 && args[consumed-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// printHelp prints the running command's usage line, help and flags.
func (c *cli) printHelp(fs *flag.FlagSet) {
	w := c.stdout
	fmt.Fprintf(w, "Usage: %s\n\n%s\n", strings.TrimSpace("podsnapshot "+c.cmd.name+" "+c.cmd.usage), strings.TrimSpace(c.cmd.help))
	short := map[string]bool{}
	for _, s := range c.aliases {
		short[s] = true
	}
	first := true
	fs.VisitAll(func(f *flag.Flag) {
		if short[f.Name] {
			return
		}
		if first {
			fmt.Fprintln(w, "\nFlags:")
			first = false
		}
		names := dashed(f.Name)
		if s, ok := c.aliases[f.Name]; ok {
			names = dashed(s) + ", " + names
		}
		typ, usage := flag.UnquoteUsage(f)
		if typ != "" {
			names += " " + strings.ToUpper(typ)
		}
		switch f.DefValue {
		case "", "false", "0", "0s":
		default:
			usage += fmt.Sprintf(" (default %q)", f.DefValue)
		}
		fmt.Fprintf(w, "  %-26s %s\n", names, usage)
	})
}

// dashed is a flag name as the help shows it: "-A" for one letter, else "--name".
func dashed(name string) string {
	if len(name) == 1 {
		return "-" + name
	}
	return "--" + name
}

// stringFlag defines a string flag with a one-letter alias (short may be "").
func (c *cli) stringFlag(fs *flag.FlagSet, p *string, short, long, def, usage string) {
	fs.StringVar(p, long, def, usage)
	if short != "" {
		fs.StringVar(p, short, def, usage)
		c.alias(short, long)
	}
}

// boolFlag defines a bool flag with a one-letter alias.
func (c *cli) boolFlag(fs *flag.FlagSet, p *bool, short, long, usage string) {
	fs.BoolVar(p, long, false, usage)
	fs.BoolVar(p, short, false, usage)
	c.alias(short, long)
}

func (c *cli) alias(short, long string) {
	if c.aliases == nil {
		c.aliases = map[string]string{}
	}
	c.aliases[long] = short
}
