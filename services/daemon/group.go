package daemon

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"

	"github.com/flotilla/flotilla/services/config"
	"github.com/flotilla/flotilla/services/server"
)

// A Group is several daemons run in one process, each built by its own Spec
// exactly as when it runs alone, with the calls between them made in memory
// (server.EnableInProcess): Flotilla's one-process mode.
//
// Its command line is --components (all, or a comma-separated list of
// component names) and every flag of every component, named
// <component>.<flag>: `--contentd.root /var/lib/x --taskd.log-level debug`.
// A component's --<component>.config file is read as when it runs alone, and
// its flags on the command line win over the file.
type Group struct {
	// Name is the command's name, for errors and --help.
	Name string
	// Summary is one line for --help saying what the command does.
	Summary string
	// Specs are the components in the order they start; they stop in the
	// reverse order, each once the ones started after it have stopped.
	Specs []Spec
}

// MainGroup runs g with the process's arguments and exits the process when
// the group stops.
func MainGroup(g Group) {
	if err := RunGroup(context.Background(), g, os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintf(os.Stderr, "%s: %v\n", g.Name, err)
		os.Exit(1)
	}
}

// RunGroup is MainGroup without the exit. It starts the chosen components
// one after the other, each once the one before it serves, and serves until
// ctx ends, SIGTERM or SIGINT arrives, or a component stops by itself (an
// error: its error is returned); then it stops the others in reverse order.
func RunGroup(ctx context.Context, g Group, args []string) error {
	chosen, err := g.parse(args)
	if err != nil {
		return err
	}
	server.EnableInProcess()
	ctx, stopSignals := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stopSignals()

	type result struct {
		i   int
		err error
	}
	results := make(chan result, len(chosen))
	cancels := make([]context.CancelFunc, 0, len(chosen))
	stopped := make([]bool, len(chosen))
	errs := make([]error, len(chosen))
	record := func(r result) {
		stopped[r.i] = true
		if r.err != nil {
			errs[r.i] = fmt.Errorf("%s: %w", chosen[r.i].Name, r.err)
		}
	}
	// stopAll stops the running components, last started first, each
	// once the ones after it are gone, and returns what went wrong.
	stopAll := func() error {
		for i := len(cancels) - 1; i >= 0; i-- {
			cancels[i]()
			for !stopped[i] {
				record(<-results)
			}
		}
		return errors.Join(errs...)
	}
	// exited is what a component that stopped by itself returns: an
	// error, since the process no longer stands for its node.
	exited := func(r result) error {
		record(r)
		if errs[r.i] == nil {
			errs[r.i] = fmt.Errorf("%s stopped", chosen[r.i].Name)
		}
		return stopAll()
	}

	for i, spec := range chosen {
		spec.ServerOptions = append(slices.Clone(spec.ServerOptions), server.WithoutSignals())
		cctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		srv, err := build(cctx, spec, inGroup)
		if err != nil {
			cancel()
			errs[i] = fmt.Errorf("%s: %w", spec.Name, err)
			return stopAll()
		}
		cancels = append(cancels, cancel)
		go func() { results <- result{i, srv.Run(cctx)} }()
		select {
		case <-srv.Serving():
		case r := <-results:
			return exited(r)
		case <-ctx.Done():
			return stopAll()
		}
	}
	select {
	case r := <-results:
		return exited(r)
	case <-ctx.Done():
		return stopAll()
	}
}

// parse reads args into the components' configs and returns the chosen
// components' specs in start order.
func (g Group) parse(args []string) ([]Spec, error) {
	top := flag.NewFlagSet(g.Name, flag.ContinueOnError)
	components := top.String("components", "all",
		"components to run in this process: all, or a comma-separated list of "+strings.Join(g.names(), ", "))
	sets := make([]*flag.FlagSet, len(g.Specs))
	given := make([][]string, len(g.Specs)) // each component's own command line
	for i, spec := range g.Specs {
		fs, err := flags(spec)
		if err != nil {
			return nil, err
		}
		sets[i] = fs
		fs.VisitAll(func(f *flag.Flag) {
			top.Var(&prefixed{flag: f, args: &given[i]}, spec.Name+"."+f.Name, spec.Name+": "+f.Usage)
		})
	}
	top.Usage = func() {
		fmt.Fprintf(top.Output(), "%s — %s\n\nUsage: %s [--components LIST] [--COMPONENT.FLAG VALUE ...]\n\nFlags:\n", g.Name, g.Summary, g.Name)
		top.PrintDefaults()
	}
	if err := top.Parse(args); err != nil {
		return nil, err
	}
	if top.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %v", top.Args())
	}
	want, err := g.choose(*components)
	if err != nil {
		return nil, err
	}
	var chosen []Spec
	for i, spec := range g.Specs {
		if !want[spec.Name] {
			if len(given[i]) > 0 {
				return nil, fmt.Errorf("flags for %s given, but it is not among --components %s", spec.Name, *components)
			}
			continue
		}
		if err := config.Parse(sets[i], given[i], spec.Config, &spec.Common.ConfigFile); err != nil {
			return nil, fmt.Errorf("%s: %w", spec.Name, err)
		}
		chosen = append(chosen, spec)
	}
	return chosen, nil
}

func (g Group) names() []string {
	var names []string
	for _, s := range g.Specs {
		names = append(names, s.Name)
	}
	return names
}

// choose reads --components.
func (g Group) choose(list string) (map[string]bool, error) {
	want := map[string]bool{}
	known := g.names()
	for _, name := range strings.Split(list, ",") {
		name = strings.TrimSpace(name)
		switch {
		case name == "all":
			for _, n := range known {
				want[n] = true
			}
		case slices.Contains(known, name):
			want[name] = true
		case name != "":
			return nil, fmt.Errorf("--components: no component %q (there are %s)", name, strings.Join(known, ", "))
		}
	}
	if len(want) == 0 {
		return nil, errors.New("--components names no component")
	}
	return want, nil
}

// prefixed is one component's flag on the group's command line: what it is
// given is kept as the component's own argument, parsed with the
// component's flag set once the config file has been read.
type prefixed struct {
	flag *flag.Flag
	args *[]string
}

func (p *prefixed) String() string {
	if p == nil || p.flag == nil {
		return ""
	}
	return p.flag.DefValue
}

func (p *prefixed) Set(v string) error {
	// Checked now, so that a bad value is named with the flag it came with.
	if err := p.flag.Value.Set(v); err != nil {
		return err
	}
	*p.args = append(*p.args, "--"+p.flag.Name+"="+v)
	return nil
}

func (p *prefixed) IsBoolFlag() bool {
	b, ok := p.flag.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}
