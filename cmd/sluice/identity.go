package main

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/sluice-mesh/sluice/dataplane"
	"github.com/sluice-mesh/sluice/dataplane/model"
	"github.com/sluice-mesh/sluice/identity"
)

// identityApplier completes each state with the node's identities before
// it is applied: who each local cgroup and each workload address is. They
// matter only to policy, so a mesh without any policy skips the work
// (about 20 ms at 100,000 endpoints).
type identityApplier struct {
	next   interface{ Apply(model.State) error }
	locals func() []identity.Local
	log    *slog.Logger
}

func (a *identityApplier) Apply(s model.State) error {
	if hasPolicy(s.Services) {
		ids, st, err := identity.Build(s.Services, a.locals())
		if err != nil {
			return err
		}
		if len(st.AmbiguousAddrs) > 0 {
			a.log.Warn("addresses claimed by several identities are treated as unknown sources",
				"count", len(st.AmbiguousAddrs), "first", st.AmbiguousAddrs[0])
		}
		s.Identities = ids
	}
	return a.next.Apply(s)
}

func hasPolicy(services []model.Service) bool {
	for i := range services {
		if len(services[i].Policies) > 0 {
			return true
		}
	}
	return false
}

// resolveWorkloads finds the cgroup id of each workload of the workloads
// file. A workload whose cgroup does not exist (yet) is left out: it runs
// nothing that could connect.
func resolveWorkloads(ws []identity.Workload, mount string, log *slog.Logger) []identity.Local {
	out := make([]identity.Local, 0, len(ws))
	for _, w := range ws {
		path := w.Cgroup
		if !filepath.IsAbs(path) {
			path = filepath.Join(mount, path)
		}
		id, err := dataplane.CgroupID(path)
		if err != nil {
			if !errors.Is(err, os.ErrNotExist) {
				log.Warn("workload left without identity", "workload", w.Namespace+"/"+w.Name, "err", err)
			}
			continue
		}
		out = append(out, identity.Local{Workload: w, CgroupID: id, CgroupPath: path})
	}
	return out
}

// enforce runs the dataplane's enforcement loop over the network
// namespaces of the routed cgroup subtree until ctx ends.
func enforce(ctx context.Context, dp *dataplane.Dataplane, cgroup string, log *slog.Logger) {
	netns := func() []string {
		ns, err := dataplane.NetnsInCgroup(cgroup)
		if err != nil {
			log.Warn("could not list network namespaces to terminate denied connections in", "err", err)
		}
		return ns
	}
	observe := func(e dataplane.Event) {
		log.Debug("policy event", "kind", e.Kind, "source", e.Source, "identity", e.SPIFFEID,
			"destination", e.Destination, "policy", e.Rule.Policy, "rule", e.Rule.Rule)
	}
	if err := dp.Enforce(ctx, netns, observe); err != nil && !errors.Is(err, context.Canceled) {
		log.Error("policy enforcement stopped: denied connections at this node's servers are no longer reset", "err", err)
	}
}
