package main

import (
	"flag"
	"fmt"

	"github.com/vtepd/vtepd/agent"
)

// etcdFlags are the flags every subcommand that reads etcd shares, with
// flannel's names.
type etcdFlags struct {
	endpoints listFlag
	prefix    string
}

func (e *etcdFlags) register(fs *flag.FlagSet) {
	e.endpoints = listFlag{values: []string{"http://127.0.0.1:2379"}}
	fs.Var(&e.endpoints, "etcd-endpoints", "comma-separated etcd endpoints")
	fs.StringVar(&e.prefix, "etcd-prefix", "/coreos.com/network", "etcd prefix of the network config and leases (flannel's)")
}

// config validates the flags into the agent's etcd configuration.
func (e *etcdFlags) config() (agent.EtcdConfig, error) {
	if len(e.endpoints.values) == 0 {
		return agent.EtcdConfig{}, usageError{fmt.Errorf("--etcd-endpoints is empty")}
	}
	return agent.EtcdConfig{Endpoints: e.endpoints.values}, nil
}
