package dataplane

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"

	"github.com/cilium/ebpf"

	"github.com/sluice-mesh/sluice/dataplane/model"
	"github.com/sluice-mesh/sluice/dataplane/policy"
)

// authz is what the dataplane has programmed for identity and policy.
// Guarded by Dataplane.mu.
type authz struct {
	cgroups map[uint64]serviceSlCgroupValue // sl_cgroups as written; nil until read back
	fast    map[serviceSlAddrKey]uint32     // sl_fast_addrs as written
	addrs   map[serviceSlAddrKey]uint32     // sl_addrs as written; nil until read back
	gen     uint32                          // policy generation the programs read
	tables  *policy.Tables                  // compiled tables in force; nil after adoption
	dirty   bool                            // entries of the standby generation may exist
	ruleIDs map[string]uint32               // rule key → kernel rule id (index of sl_rule_stats)
	rules   map[uint32]policy.Rule          // kernel rule id → rule
	names   map[uint32]string               // identity → SPIFFE ID in force, for events
}

// compiledAuthz is an Apply's identity and policy, checked against the
// capacities before anything is written.
type compiledAuthz struct {
	cgroups map[uint64]serviceSlCgroupValue
	addrs   map[serviceSlAddrKey]uint32
	fast    map[serviceSlAddrKey]uint32 // local workloads' addresses: their fast-path settings
	tables  *policy.Tables
	names   map[uint32]string
}

// compileAuthz compiles s's identities and policies. Its errors are
// *model.EntryError of class model.ErrInvalidState or model.ErrCapacity.
func compileAuthz(s model.State, c Capacity) (*compiledAuthz, error) {
	ids := s.Identities
	out := &compiledAuthz{
		cgroups: make(map[uint64]serviceSlCgroupValue, len(ids.Cgroups)),
		addrs:   make(map[serviceSlAddrKey]uint32, len(ids.Addrs)),
		fast:    map[serviceSlAddrKey]uint32{},
		names:   ids.Names,
	}
	bad := func(entry, reason string, class error) error {
		return &model.EntryError{Entry: entry, Reason: reason, Class: class}
	}
	for i, cg := range ids.Cgroups {
		entry := fmt.Sprintf("workload cgroup %d (%s)", i, cg.Path)
		if cg.CgroupID == 0 {
			return nil, bad(entry, "cgroup id 0", model.ErrInvalidState)
		}
		if _, ok := ids.Names[cg.Identity]; !ok {
			return nil, bad(entry, fmt.Sprintf("identity %d has no SPIFFE ID in Identities.Names", cg.Identity), model.ErrInvalidState)
		}
		if _, dup := out.cgroups[cg.CgroupID]; dup {
			return nil, bad(entry, fmt.Sprintf("cgroup id %d listed twice", cg.CgroupID), model.ErrInvalidState)
		}
		v := serviceSlCgroupValue{Identity: cg.Identity}
		for _, a := range cg.Addrs {
			switch {
			case a.Is4() && v.Addr4 == 0:
				v.Addr4 = addrWords(a)[0]
			case a.Is6() && !a.Is4In6() && v.Addr6 == [4]uint32{}:
				v.Addr6 = addrWords(a)
			default:
				return nil, bad(entry, "address "+a.String()+": at most one address per family, not v4-mapped", model.ErrInvalidState)
			}
			// Every local workload's address: a service whose fast path
			// is on needs to know both ends are local.
			out.fast[addrKey(a)] = uint32(cg.FastPath)
		}
		switch {
		case cg.FastPath > model.FastPathOff:
			return nil, bad(entry, "fast path setting "+cg.FastPath.String()+" is not unset, on or off", model.ErrInvalidState)
		case cg.FastPath == model.FastPathOn && len(cg.Addrs) == 0:
			return nil, bad(entry, "fast path on but no address: the fast path finds workloads by address", model.ErrInvalidState)
		}
		out.cgroups[cg.CgroupID] = v
	}
	for _, ai := range ids.Addrs {
		if !ai.Addr.IsValid() || ai.Addr.Is4In6() || ai.Addr.Zone() != "" {
			return nil, bad("workload address "+ai.Addr.String(), "invalid, zoned or v4-mapped", model.ErrInvalidState)
		}
		if _, ok := ids.Names[ai.Identity]; !ok {
			return nil, bad("workload address "+ai.Addr.String(), fmt.Sprintf("identity %d has no SPIFFE ID in Identities.Names", ai.Identity), model.ErrInvalidState)
		}
		k := addrKey(ai.Addr)
		if prev, dup := out.addrs[k]; dup && prev != ai.Identity {
			return nil, bad("workload address "+ai.Addr.String(), fmt.Sprintf("claimed by identities %d and %d", prev, ai.Identity), model.ErrInvalidState)
		}
		out.addrs[k] = ai.Identity
	}
	for _, a := range ids.Proxies {
		if !a.IsValid() || a.Is4In6() || a.Zone() != "" {
			return nil, bad("L7 proxy address "+a.String(), "invalid, zoned or v4-mapped", model.ErrInvalidState)
		}
		k := addrKey(a)
		if prev, dup := out.addrs[k]; dup && prev != ownerProxy {
			return nil, bad("L7 proxy address "+a.String(), fmt.Sprintf("also the address of a workload (identity %d)", prev), model.ErrInvalidState)
		}
		out.addrs[k] = ownerProxy
	}
	tables, err := policy.Compile(s.Services, ids.Names)
	if err != nil {
		return nil, bad("policy", err.Error(), model.ErrInvalidState)
	}
	out.tables = tables
	over := func(what string, n, limit int, field string) error {
		if n <= limit {
			return nil
		}
		return &model.EntryError{Entry: what, Reason: fmt.Sprintf("%d entries exceed the capacity of %d", n, limit), Class: model.ErrCapacity, Limit: field}
	}
	return out, errors.Join(
		over("workload cgroups", len(out.cgroups), c.Workloads, "Workloads"),
		over("workload addresses", len(out.addrs), c.Addresses, "Addresses"),
		over("fast-path addresses", len(out.fast), 2*c.Workloads, "Workloads"),
		over("policy destinations", len(tables.Dests), c.PolicyDests, "PolicyDests"),
		over("policy source classes", len(tables.Classes), c.Classes, "Classes"),
		over("policy verdicts", len(tables.Verdicts), c.Verdicts, "Verdicts"),
		over("policy rules", len(tables.Rules), c.Rules, "Rules"),
	)
}

func addrKey(a netip.Addr) serviceSlAddrKey {
	return serviceSlAddrKey{Addr: addrWords(a), Family: family(a)}
}

// applyAuthz writes identities and policy. New identities are written
// before the policy that may name them and old ones removed after it, so
// a decision never sees a policy without the identities it was compiled
// for. The policy tables go to the standby generation, which is then
// switched in with one update.
func (d *Dataplane) applyAuthz(ca *compiledAuthz) error {
	a := &d.authz
	if err := a.readBack(&d.objs); err != nil {
		return err
	}
	if err := syncMap(d, d.objs.SlCgroups, a.cgroups, ca.cgroups, false); err != nil {
		return fmt.Errorf("write workload cgroups: %w", err)
	}
	if err := syncMap(d, d.objs.SlAddrs, a.addrs, ca.addrs, false); err != nil {
		return fmt.Errorf("write workload addresses: %w", err)
	}
	if err := syncMap(d, d.objs.SlFastAddrs, a.fast, ca.fast, false); err != nil {
		return fmt.Errorf("write fast-path addresses: %w", err)
	}
	if err := d.applyPolicy(ca.tables); err != nil {
		return err
	}
	a.names = ca.names
	if err := syncMap(d, d.objs.SlCgroups, a.cgroups, ca.cgroups, true); err != nil {
		return fmt.Errorf("remove workload cgroups: %w", err)
	}
	if err := syncMap(d, d.objs.SlAddrs, a.addrs, ca.addrs, true); err != nil {
		return fmt.Errorf("remove workload addresses: %w", err)
	}
	if err := syncMap(d, d.objs.SlFastAddrs, a.fast, ca.fast, true); err != nil {
		return fmt.Errorf("remove fast-path addresses: %w", err)
	}
	return nil
}

// readBack loads what the identity maps and the policy generation hold,
// once per process: a previous agent may have written them.
func (a *authz) readBack(objs *serviceObjects) error {
	if a.cgroups != nil {
		return nil
	}
	cgroups, err := readMap[uint64, serviceSlCgroupValue](objs.SlCgroups)
	if err != nil {
		return fmt.Errorf("read workload cgroups: %w", err)
	}
	addrs, err := readMap[serviceSlAddrKey, uint32](objs.SlAddrs)
	if err != nil {
		return fmt.Errorf("read workload addresses: %w", err)
	}
	fast, err := readMap[serviceSlAddrKey, uint32](objs.SlFastAddrs)
	if err != nil {
		return fmt.Errorf("read fast-path addresses: %w", err)
	}
	var cfg serviceSlPolicyConfig
	if err := objs.SlPolicyActive.Lookup(uint32(0), &cfg); err != nil {
		return fmt.Errorf("read policy generation: %w", err)
	}
	a.cgroups, a.addrs, a.fast, a.gen, a.dirty = cgroups, addrs, fast, cfg.Gen&1, true
	a.ruleIDs = map[string]uint32{}
	a.rules = map[uint32]policy.Rule{}
	return nil
}

func readMap[K comparable, V any](m *ebpf.Map) (map[K]V, error) {
	out := map[K]V{}
	var k K
	var v V
	it := m.Iterate()
	for it.Next(&k, &v) {
		out[k] = v
	}
	return out, it.Err()
}

// syncMap makes m hold want, given that it holds have (which it updates):
// the additions and changes first (removals false), or the removals.
func syncMap[K comparable, V comparable](d *Dataplane, m *ebpf.Map, have, want map[K]V, removals bool) error {
	var keys []K
	var vals []V
	if removals {
		for k := range have {
			if _, ok := want[k]; !ok {
				keys = append(keys, k)
			}
		}
		if len(keys) == 0 {
			return nil
		}
		if _, err := m.BatchDelete(keys, nil); err != nil {
			return err
		}
		for _, k := range keys {
			delete(have, k)
		}
		d.written.Add(uint64(len(keys)))
		return nil
	}
	for k, v := range want {
		if old, ok := have[k]; !ok || old != v {
			keys = append(keys, k)
			vals = append(vals, v)
		}
	}
	if len(keys) == 0 {
		return nil
	}
	if _, err := m.BatchUpdate(keys, vals, nil); err != nil {
		return err
	}
	for i, k := range keys {
		have[k] = vals[i]
	}
	d.written.Add(uint64(len(keys)))
	return nil
}

// applyPolicy writes t into the standby policy generation, switches the
// programs to it, waits until no program reads the old one and clears it.
func (d *Dataplane) applyPolicy(t *policy.Tables) error {
	a := &d.authz
	if a.tables != nil && !a.dirty && tablesEqual(a.tables, t) {
		return nil
	}
	standby := 1 - a.gen
	if a.dirty {
		if err := d.clearPolicyGen(standby); err != nil {
			return fmt.Errorf("clear policy generation %d: %w", standby, err)
		}
		a.dirty = false
	}
	ids, err := a.ruleIDsFor(t, d.opts.Capacity.Rules, d.objs.SlRuleStats)
	if err != nil {
		return err
	}
	if err := d.writePolicyGen(standby, t, ids); err != nil {
		a.dirty = true
		return fmt.Errorf("write policy generation %d: %w", standby, err)
	}
	if err := d.objs.SlPolicyActive.Put(uint32(0), serviceSlPolicyConfig{Gen: standby}); err != nil {
		a.dirty = true
		return fmt.Errorf("switch to policy generation %d: %w", standby, err)
	}
	old := a.gen
	a.gen, a.tables = standby, t
	waitForReaders()
	if err := d.clearPolicyGen(old); err != nil {
		a.dirty = true
		d.log.Warn("dataplane: could not clear the old policy generation; it is cleared on the next apply", "err", err)
	}
	a.releaseRules(t)
	select {
	case d.policyChanged <- struct{}{}:
	default:
	}
	return nil
}

// ruleIDsFor gives every rule of t a kernel id, keeping the id of a rule
// already counted so its counters go on, and zeroing the counters of a
// newly used id.
func (a *authz) ruleIDsFor(t *policy.Tables, capacity int, stats *ebpf.Map) ([]uint32, error) {
	ids := make([]uint32, len(t.Rules))
	used := make(map[uint32]bool, len(a.rules))
	for id := range a.rules {
		used[id] = true
	}
	next := uint32(1)
	for i, r := range t.Rules {
		key := r.Key()
		if id, ok := a.ruleIDs[key]; ok {
			ids[i] = id
			continue
		}
		for used[next] {
			next++
		}
		if int(next) > capacity {
			return nil, &model.EntryError{Entry: "policy rules", Reason: fmt.Sprintf("more than the capacity of %d rules in use", capacity), Class: model.ErrCapacity, Limit: "Rules"}
		}
		zero := make([]serviceSlRuleStat, ebpf.MustPossibleCPU())
		if err := stats.Put(next, zero); err != nil {
			return nil, fmt.Errorf("reset counters of rule %d: %w", next, err)
		}
		ids[i], used[next] = next, true
		a.ruleIDs[key], a.rules[next] = next, r
	}
	return ids, nil
}

// releaseRules forgets the ids of rules t no longer has.
func (a *authz) releaseRules(t *policy.Tables) {
	keep := make(map[string]bool, len(t.Rules))
	for _, r := range t.Rules {
		keep[r.Key()] = true
	}
	for key, id := range a.ruleIDs {
		if !keep[key] {
			delete(a.ruleIDs, key)
			delete(a.rules, id)
		}
	}
}

func (d *Dataplane) writePolicyGen(gen uint32, t *policy.Tables, ruleIDs []uint32) error {
	kernelRule := func(r uint32) uint32 {
		if r == 0 {
			return 0
		}
		return ruleIDs[r-1]
	}
	dk := make([]serviceSlDestKey, len(t.Dests))
	dv := make([]serviceSlDestValue, len(t.Dests))
	for i, e := range t.Dests {
		dk[i] = serviceSlDestKey{Gen: gen, Addr: addrWords(e.Addr), Port: htons(e.Port), Family: family(e.Addr)}
		dv[i] = serviceSlDestValue{Set: e.Set}
		if e.HasCIDR {
			dv[i].Flags = 1 // SL_DEST_HAS_CIDR
		}
	}
	vk := make([]serviceSlVerdictKey, len(t.Verdicts))
	vv := make([]serviceSlVerdict, len(t.Verdicts))
	for i, v := range t.Verdicts {
		vk[i] = serviceSlVerdictKey{Gen: gen, Set: v.Set, Identity: v.Identity, Class: v.Class}
		var flags uint8
		if v.Deny {
			flags |= 1 // SL_VERDICT_DENY
		}
		if v.Terminate {
			flags |= 2 // SL_VERDICT_TERMINATE
		}
		vv[i] = serviceSlVerdict{Flags: flags, Shadow: uint8(v.Shadow), Rule: kernelRule(v.Rule), ShadowRule: kernelRule(v.ShadowRule)}
	}
	// Verdicts and classes before the destinations that lead to them.
	if len(vk) > 0 {
		if _, err := d.objs.SlVerdicts.BatchUpdate(vk, vv, nil); err != nil {
			return fmt.Errorf("verdicts: %w", err)
		}
	}
	for _, c := range t.Classes {
		k := serviceSlClassKey{
			Prefixlen: 96 + uint32(c.Prefix.Bits()), Gen: gen, Set: c.Set,
			Family: uint32(family(c.Prefix.Addr())), Addr: addrWords(c.Prefix.Addr()),
		}
		if err := d.objs.SlClasses.Put(k, c.Class); err != nil {
			return fmt.Errorf("class %s of set %d: %w", c.Prefix, c.Set, err)
		}
	}
	if len(dk) > 0 {
		if _, err := d.objs.SlDests.BatchUpdate(dk, dv, nil); err != nil {
			return fmt.Errorf("destinations: %w", err)
		}
	}
	d.written.Add(uint64(len(dk) + len(vk) + len(t.Classes)))
	return nil
}

// clearPolicyGen deletes every entry of policy generation gen. It scans
// the maps, so it also removes what a previous process left.
func (d *Dataplane) clearPolicyGen(gen uint32) error {
	if err := clearGen[serviceSlDestKey, serviceSlDestValue](d, d.objs.SlDests, func(k *serviceSlDestKey) bool { return k.Gen == gen }); err != nil {
		return fmt.Errorf("destinations: %w", err)
	}
	if err := clearGen[serviceSlVerdictKey, serviceSlVerdict](d, d.objs.SlVerdicts, func(k *serviceSlVerdictKey) bool { return k.Gen == gen }); err != nil {
		return fmt.Errorf("verdicts: %w", err)
	}
	var keys []serviceSlClassKey
	var k serviceSlClassKey
	var v uint32
	it := d.objs.SlClasses.Iterate()
	for it.Next(&k, &v) {
		if k.Gen == gen {
			keys = append(keys, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("classes: %w", err)
	}
	for _, k := range keys {
		if err := d.objs.SlClasses.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("classes: %w", err)
		}
	}
	d.written.Add(uint64(len(keys)))
	return nil
}

func clearGen[K any, V any](d *Dataplane, m *ebpf.Map, match func(*K) bool) error {
	var keys []K
	var k K
	var v V
	it := m.Iterate()
	for it.Next(&k, &v) {
		if match(&k) {
			keys = append(keys, k)
		}
	}
	if err := it.Err(); err != nil {
		return err
	}
	if len(keys) == 0 {
		return nil
	}
	if _, err := m.BatchDelete(keys, nil); err != nil {
		return err
	}
	d.written.Add(uint64(len(keys)))
	return nil
}

func tablesEqual(a, b *policy.Tables) bool {
	return slices.Equal(a.Dests, b.Dests) && slices.Equal(a.Classes, b.Classes) &&
		slices.Equal(a.Verdicts, b.Verdicts) && slices.Equal(a.Rules, b.Rules)
}

// ownerProxy marks an L7 proxy's address in sl_addrs (SL_OWNER_PROXY).
const ownerProxy = math.MaxUint32
