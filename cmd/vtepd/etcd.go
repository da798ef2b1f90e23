package main

import (
	"flag"
	"fmt"

	"github.com/vtepd/vtepd/etcdclient"
)

// etcdFlags are the flags every subcommand that reads etcd shares, with
// flannel's names.
type etcdFlags struct {
	endpoints    listFlag
	prefix       string
	caFile       string
	certFile     string
	keyFile      string
	username     string
	password     string
	passwordFile string
	// origins, if set, say where the values came from, for errors.
	origins map[string]origin
}

func (e *etcdFlags) register(fs *flag.FlagSet) {
	e.endpoints = listFlag{values: []string{"http://127.0.0.1:2379"}}
	fs.Var(&e.endpoints, "etcd-endpoints", "comma-separated etcd endpoints")
	fs.StringVar(&e.prefix, "etcd-prefix", "/coreos.com/network", "etcd prefix of the network config and leases (flannel's)")
	fs.StringVar(&e.caFile, "etcd-cafile", "", "PEM file of the CA certificates that verify etcd's servers (default for https endpoints: the system's)")
	fs.StringVar(&e.certFile, "etcd-certfile", "", "PEM file of the client certificate, for an etcd that requires one (with --etcd-keyfile)")
	fs.StringVar(&e.keyFile, "etcd-keyfile", "", "PEM file of the private key of --etcd-certfile")
	fs.StringVar(&e.username, "etcd-username", "", "user to log in to etcd as, for an etcd with authentication on")
	fs.StringVar(&e.password, "etcd-password", "", "password of --etcd-username; any local user can read a command line: prefer --etcd-password-file or VTEPD_ETCD_PASSWORD")
	fs.StringVar(&e.passwordFile, "etcd-password-file", "", "file holding the password of --etcd-username (one trailing newline is dropped)")
}

// config validates the flags into the agent's etcd configuration. The TLS
// and password files are read now, so that a wrong one stops the command
// at once with a usage error that names it, before any connection.
func (e *etcdFlags) config() (etcdclient.Config, error) {
	if e.password != "" && e.passwordFile != "" {
		// Either may come from the environment, where it is easy to
		// forget; which one would win is anybody's guess.
		return etcdclient.Config{}, usageError{fmt.Errorf("%s and %s both given: give one", e.where("etcd-password"), e.where("etcd-password-file"))}
	}
	cfg := etcdclient.Config{
		Endpoints:    e.endpoints.values,
		CAFile:       e.caFile,
		CertFile:     e.certFile,
		KeyFile:      e.keyFile,
		Username:     e.username,
		Password:     etcdclient.Secret(e.password),
		PasswordFile: e.passwordFile,
	}
	if err := cfg.Check(); err != nil {
		return etcdclient.Config{}, usageError{err}
	}
	return cfg, nil
}

// where names a flag for an error: as its value was given when known, else
// with its VTEPD_* variable, the other place it may have come from.
func (e *etcdFlags) where(name string) string {
	if o, ok := e.origins[name]; ok {
		return o.String()
	}
	return fmt.Sprintf("--%s (or %s)", name, envName(name))
}
