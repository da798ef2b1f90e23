package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"regexp"
	"strings"

	"github.com/vtepd/vtepd/subnetfile"
)

// dockerOptsCommand turns the subnet file into dockerd's options, as
// flannel's mk-docker-opts.sh does: the bridge's address and the MTU, and
// --ip-masq=false when vtepd masquerades, so that Docker's own masquerade
// (every packet from the bridge's subnet not leaving through docker0) does
// not rewrite traffic between containers of different hosts.
func dockerOptsCommand(args []string, stdout, stderr io.Writer) error {
	fset := newFlagSet("docker-opts", stderr)
	path := fset.String("subnet-file", subnetfile.DefaultPath, "the subnet file vtepd writes when it is ready")
	asJSON := fset.Bool("json", false, "print the fragment of /etc/docker/daemon.json instead of command-line options")
	envKey := fset.String("env", "", "print one line KEY=\"options\" for a systemd EnvironmentFile, e.g. --env DOCKER_OPTS")
	if err := parseFlags(fset, args); err != nil {
		return err
	}
	if *asJSON && *envKey != "" {
		return usageError{errors.New("--json and --env exclude each other")}
	}
	if *envKey != "" && !shellName.MatchString(*envKey) {
		return usageError{fmt.Errorf("invalid value %q for --env: want a variable name such as DOCKER_OPTS", *envKey)}
	}
	env, err := subnetfile.Read(*path)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w (vtepd writes it once it is ready: start dockerd after vtepd)", err)
	}
	if err != nil {
		return err
	}
	switch {
	case !env.Subnet.IsValid():
		return fmt.Errorf("%s: FLANNEL_SUBNET is missing", *path)
	case env.MTU <= 0:
		return fmt.Errorf("%s: FLANNEL_MTU is missing", *path)
	}
	if *asJSON {
		frag := map[string]any{"bip": env.Subnet.String(), "mtu": env.MTU}
		if env.IPMasq {
			frag["ip-masq"] = false
		}
		b, err := json.MarshalIndent(frag, "", "  ")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(stdout, "%s\n", b)
		return err
	}
	opts := []string{"--bip=" + env.Subnet.String(), fmt.Sprintf("--mtu=%d", env.MTU)}
	if env.IPMasq {
		opts = append(opts, "--ip-masq=false")
	}
	if *envKey != "" {
		_, err = fmt.Fprintf(stdout, "%s=\"%s\"\n", *envKey, strings.Join(opts, " "))
		return err
	}
	_, err = fmt.Fprintln(stdout, strings.Join(opts, " "))
	return err
}

var shellName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
