package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strings"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// newFlagSet returns a flag set for a subcommand that reports errors to the
// caller instead of exiting.
func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("vtepd "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: vtepd %s [flags]\n\nFlags (each also from VTEPD_<FLAG>, e.g. VTEPD_ETCD_ENDPOINTS):\n", name)
		fs.PrintDefaults()
	}
	return fs
}

// source is where a flag's value came from, in rising precedence.
type source int

const (
	fromDefault     source = iota
	fromFlanneldEnv        // FLANNELD_<FLAG>: flanneld's environment files
	fromVtepdEnv           // VTEPD_<FLAG>
	fromCommandLine
)

// origin is where one flag's value came from, for the precedence between
// spellings of one setting and for errors that name what to fix.
type origin struct {
	source source
	flag   string // the flag's name
	env    string // the variable's name, for the environment
}

func (o origin) String() string {
	if o.source == fromCommandLine {
		return "--" + o.flag
	}
	return fmt.Sprintf("%s (--%s)", o.env, o.flag)
}

// envSpec says what the environment may set beyond VTEPD_<FLAG>.
type envSpec struct {
	// flanneld names the flags also read from FLANNELD_<FLAG>, when
	// VTEPD_<FLAG> is unset: flanneld's flags, as flanneld reads them.
	flanneld map[string]bool
	// cliOnly names the flags never read from the environment.
	cliOnly map[string]bool
	// skipEnv, if set, is asked after the command line is parsed: true
	// leaves the environment unread (--version, as flanneld).
	skipEnv func() bool
}

// parsed is what parseFlagsEnv found beyond the flags' values.
type parsed struct {
	// origins holds every flag not left at its default.
	origins map[string]origin
	// warnings are FLANNELD_* variables that name no flag read from them:
	// ignored, as flanneld ignores them, but said.
	warnings []string
}

// set says whether a flag was given, anywhere.
func (p parsed) set(name string) bool { return p.origins[name].source != fromDefault }

// where names a flag as its value was given, for an error about the value:
// "--flag", or "VARIABLE (--flag)".
func (p parsed) where(name string) string {
	if !p.set(name) {
		return "--" + name
	}
	return p.origins[name].String()
}

// pick returns which of names, spellings of one setting (vtepd's and
// flanneld's), gives the setting its value: the one from the highest
// source; "" when none is set. Two set at the same source are refused,
// naming both, whether or not they agree: which one was meant is
// anybody's guess.
func (p parsed) pick(names ...string) (string, error) {
	best := ""
	for _, n := range names {
		o := p.origins[n]
		switch {
		case o.source == fromDefault:
		case best == "" || o.source > p.origins[best].source:
			best = n
		case o.source == p.origins[best].source:
			return "", usageError{fmt.Errorf("%s and %s both given: they are one setting; give one", p.origins[best], o)}
		}
	}
	return best, nil
}

// parseFlags parses args, then fills every flag not given on the command
// line from its VTEPD_* environment variable. Errors name the flag, or the
// variable and the flag.
func parseFlags(fs *flag.FlagSet, args []string) error {
	_, err := parseFlagsEnv(fs, args, envSpec{})
	return err
}

// parseFlagsEnv parses args, then fills every flag not given on the
// command line from the environment: VTEPD_<FLAG>, else, for the flags in
// spec.flanneld, FLANNELD_<FLAG>. An empty variable counts as unset, as in
// flanneld. Errors name the flag, or the variable and the flag; never a
// password.
func parseFlagsEnv(fs *flag.FlagSet, args []string, spec envSpec) (parsed, error) {
	p := parsed{origins: map[string]origin{}}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return p, err
		}
		return p, usageError{err}
	}
	if fs.NArg() > 0 {
		return p, usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	fs.Visit(func(f *flag.Flag) { p.origins[f.Name] = origin{source: fromCommandLine, flag: f.Name} })
	if spec.skipEnv != nil && spec.skipEnv() {
		return p, nil
	}
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if p.set(f.Name) || spec.cliOnly[f.Name] || err != nil {
			return
		}
		o := origin{source: fromVtepdEnv, flag: f.Name, env: envName(f.Name)}
		v := os.Getenv(o.env)
		if v == "" && spec.flanneld[f.Name] {
			o = origin{source: fromFlanneldEnv, flag: f.Name, env: flanneldEnvName(f.Name)}
			v = os.Getenv(o.env)
		}
		if v == "" {
			return
		}
		if e := fs.Set(f.Name, v); e != nil {
			if strings.Contains(f.Name, "password") {
				// Never echo a secret, not even inside the flag's own error.
				err = usageError{fmt.Errorf("environment %s: invalid value for --%s", o.env, f.Name)}
				return
			}
			err = usageError{fmt.Errorf("environment %s=%q: invalid value for --%s: %v", o.env, v, f.Name, e)}
			return
		}
		p.origins[f.Name] = o
	})
	if err != nil {
		return p, err
	}
	if spec.flanneld != nil {
		p.warnings = strayFlanneldEnv(fs, spec)
	}
	return p, nil
}

// strayFlanneldEnv lists the FLANNELD_* variables set that no flag reads,
// sorted: flanneld ignores those too, but a setting carried over from a
// flanneld host that does nothing should not do so without a word.
func strayFlanneldEnv(fs *flag.FlagSet, spec envSpec) []string {
	read := map[string]string{} // variable -> flag
	for name := range spec.flanneld {
		read[flanneldEnvName(name)] = name
	}
	own := map[string]string{}
	fs.VisitAll(func(f *flag.Flag) { own[flanneldEnvName(f.Name)] = f.Name })
	var out []string
	for _, kv := range os.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(k, "FLANNELD_") || v == "" {
			continue
		}
		name, isFlanneld := read[k]
		switch {
		case isFlanneld && !spec.cliOnly[name]:
			continue
		case isFlanneld:
			out = append(out, fmt.Sprintf("%s ignored: --%s is read from the command line only, as flanneld reads it", k, name))
		case own[k] != "":
			out = append(out, fmt.Sprintf("%s ignored: --%s is vtepd's flag, not flanneld's; set %s", k, own[k], envName(own[k])))
		default:
			out = append(out, fmt.Sprintf("%s ignored: vtepd reads no flag from it", k))
		}
	}
	slices.Sort(out)
	return out
}

// envName is the VTEPD_* variable of a flag.
func envName(flagName string) string { return "VTEPD_" + envSuffix(flagName) }

// flanneldEnvName is the FLANNELD_* variable of a flag, as flanneld's
// flagutil.SetFlagsFromEnv names it.
func flanneldEnvName(flagName string) string { return "FLANNELD_" + envSuffix(flagName) }

func envSuffix(flagName string) string {
	return strings.ToUpper(strings.NewReplacer("-", "_", ".", "_").Replace(flagName))
}

// addrFlag is an optional IP address flag.
// addrFlag is an IP address flag of one family (IPv6 for --public-ipv6).
type addrFlag struct {
	addr netip.Addr
	ipv6 bool
}

func (f *addrFlag) String() string {
	if !f.addr.IsValid() {
		return ""
	}
	return f.addr.String()
}

func (f *addrFlag) Set(s string) error {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return fmt.Errorf("%q is not an IP address", s)
	}
	switch {
	case f.ipv6 && (!a.Is6() || a.Is4In6()):
		return fmt.Errorf("%s is not an IPv6 address", a)
	case !f.ipv6 && !a.Is4():
		return fmt.Errorf("%s is not an IPv4 address", a)
	}
	f.addr = a
	return nil
}

// listFlag collects a flag given several times, or a comma-separated list.
type listFlag struct {
	values []string
	set    bool
	// whole takes each value as it is, commas and all: a regular
	// expression such as ^eth[0-9]{1,2}$ has one, and flanneld's
	// --iface-regex splits nothing either.
	whole bool
}

func (f *listFlag) String() string { return strings.Join(f.values, ",") }

func (f *listFlag) Set(s string) error {
	if !f.set {
		f.values, f.set = nil, true // the first Set replaces the default
	}
	if f.whole {
		if s != "" {
			f.values = append(f.values, s)
		}
		return nil
	}
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			f.values = append(f.values, v)
		}
	}
	return nil
}

// logFlags are the logging flags every long-running subcommand has.
type logFlags struct {
	level  zapcore.Level
	format string
}

func (l *logFlags) register(fs *flag.FlagSet) {
	l.level = zapcore.InfoLevel
	fs.Var(&l.level, "log-level", "log level: debug, info, warn or error (misses are logged one by one at debug)")
	fs.StringVar(&l.format, "log-format", "console", "log format: console or json")
}

// logger builds the process's logger. Sampling keeps a miss storm from
// turning into a log storm: per second, the first 100 lines with the same
// message are written, then every 100th.
func (l *logFlags) logger(stderr io.Writer) (*zap.Logger, error) {
	encCfg := zap.NewProductionEncoderConfig()
	encCfg.EncodeTime = zapcore.ISO8601TimeEncoder
	encCfg.EncodeDuration = zapcore.StringDurationEncoder
	var enc zapcore.Encoder
	switch l.format {
	case "console":
		encCfg.EncodeLevel = zapcore.CapitalLevelEncoder
		enc = zapcore.NewConsoleEncoder(encCfg)
	case "json":
		enc = zapcore.NewJSONEncoder(encCfg)
	default:
		return nil, usageError{fmt.Errorf("invalid value %q for --log-format: want console or json", l.format)}
	}
	core := zapcore.NewCore(enc, zapcore.Lock(zapcore.AddSync(stderr)), l.level)
	core = zapcore.NewSamplerWithOptions(core, 1e9, 100, 100)
	return zap.New(core), nil
}
