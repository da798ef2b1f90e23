// Command vtepd is a miss-driven VXLAN VTEP responder for etcd-backed
// overlays that share flannel's schema.
//
//	vtepd run [flags]      run the agent on this host
//	vtepd [flags]          the same: flanneld's command line, binary renamed
//	vtepd monitor [flags]  show the kernel's VXLAN misses live
//	vtepd leases [flags]   print the lease table from etcd
//	vtepd status [flags]   ask the running vtepd how it is
//	vtepd docker-opts      print dockerd's options from the subnet file
//	vtepd version          print the version
//
// Every flag of a subcommand can also be given as an environment variable:
// --etcd-endpoints as VTEPD_ETCD_ENDPOINTS, and so on. The agent also reads
// flanneld's flags from flanneld's FLANNELD_* variables when the VTEPD_*
// one is unset. A flag on the command line wins over the environment; an
// empty variable counts as unset.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// command is one vtepd subcommand.
type command struct {
	name    string
	summary string
	run     func(args []string, stdout, stderr io.Writer) error
}

func commands() []command {
	return []command{
		{"run", "run the agent on this host", runCommand},
		{"monitor", "show the kernel's VXLAN misses live (vtepd need not run)", monitorCommand},
		{"leases", "print the lease table from etcd", leasesCommand},
		{"status", "ask the running vtepd how it is", statusCommand},
		{"docker-opts", "print dockerd's options (--bip, --mtu, --ip-masq, --ipv6, --fixed-cidr-v6) from the subnet file", dockerOptsCommand},
		{"version", "print the version", func(_ []string, stdout, _ io.Writer) error {
			fmt.Fprintln(stdout, "vtepd", version)
			return nil
		}},
	}
}

// usageError is a mistake on the command line: exit status 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func main() {
	os.Exit(realMain(os.Args[1:], os.Stdout, os.Stderr))
}

func realMain(args []string, stdout, stderr io.Writer) int {
	switch {
	case len(args) == 0, strings.HasPrefix(args[0], "-") && !isHelp(args[0]):
		// No command: run the agent, as flanneld does with its flags
		// (or none: all from the environment, or the defaults).
		return exit(stderr, "vtepd", runCommand(args, stdout, stderr))
	case args[0] == "help" || isHelp(args[0]):
		usage(stderr)
		return 0
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return exit(stderr, "vtepd "+c.name, c.run(args[1:], stdout, stderr))
		}
	}
	fmt.Fprintf(stderr, "vtepd: unknown command %q\n\n", args[0])
	usage(stderr)
	return 2
}

func isHelp(arg string) bool { return arg == "-h" || arg == "-help" || arg == "--help" }

// exit reports a command's error and returns the exit status: 2 for a
// usage error, which a service manager should not restart on.
func exit(stderr io.Writer, who string, err error) int {
	var ue usageError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "%s: %v\n", who, err)
		return 2
	default:
		fmt.Fprintf(stderr, "%s: %v\n", who, err)
		return 1
	}
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: vtepd <command> [flags]")
	fmt.Fprintln(w, "       vtepd [flags of run]   (no command runs the agent, as flanneld does)")
	fmt.Fprintln(w)
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Run 'vtepd <command> -h' for a command's flags. Every flag can also be set")
	fmt.Fprintln(w, "through the environment: --etcd-endpoints as VTEPD_ETCD_ENDPOINTS; the agent")
	fmt.Fprintln(w, "reads flanneld's flags from FLANNELD_ETCD_ENDPOINTS and so on too.")
}
