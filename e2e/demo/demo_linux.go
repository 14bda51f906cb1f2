package demo

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/sluice-mesh/sluice/dataplane/model"
	"github.com/sluice-mesh/sluice/e2e/cluster"
	"github.com/sluice-mesh/sluice/xds/mesh"
)

// Options configures Run.
type Options struct {
	Out      io.Writer // required: where the demo reports
	Self     string    // required: path of the sluice binary (agents, backends, observe, uninstall)
	Mesh     string    // required: the mesh file the demo starts from (examples/mesh.yaml)
	Requests int       // optional: requests per load-balancing round, default 40
}

// demo is one run's world.
type demo struct {
	opts  Options
	out   io.Writer
	dir   string // temporary: the mesh file's copy, sockets, logs
	cast  *cast
	mesh  *meshFile // the copy the agents read
	c     *cluster.Cluster
	pods  map[string]*cluster.Pod
	nodes []*node // in cast order
	obs   *observer

	// What the demo saw: answers the allowed client got from each
	// backend, its requests that failed (a connection may have opened),
	// connections of the denied client refused with EPERM.
	answered map[string]int
	failed   int
	refused  int
}

// Run builds a two-node simulated cluster from the workloads of
// opts.Mesh, starts one `sluice agent` per node, each with its embedded
// control plane serving a copy of the file, and shows with curl and bash
// from the pods: load balancing across nodes, a live edit of the file, a
// connection the file's policy refuses, the flows `sluice observe` prints,
// a few metrics, and the datapath working on without agents until
// `sluice uninstall`. It checks every step and returns an error naming
// the first that misbehaves. Everything it creates is removed before it
// returns, also on error or when ctx ends, and it checks that nothing of
// its cluster is left.
func Run(ctx context.Context, opts Options) (err error) {
	if opts.Requests <= 0 {
		opts.Requests = 40
	}
	if os.Geteuid() != 0 {
		return errors.New("the demo needs root: it loads BPF programs and creates cgroups and network namespaces")
	}
	for _, tool := range []struct{ name, pkg string }{{"curl", "curl"}, {"bash", "bash"}, {"ip", "iproute2"}} {
		if _, err := exec.LookPath(tool.name); err != nil {
			return fmt.Errorf("the demo needs %s: apt-get install %s", tool.name, tool.pkg)
		}
	}
	d := &demo{opts: opts, out: opts.Out, pods: map[string]*cluster.Pod{}, answered: map[string]int{}}
	if d.cast, err = readCast(opts.Mesh); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("mesh file: %w (run the demo from the repository root, or pass --mesh)", err)
	} else if err != nil {
		return fmt.Errorf("mesh file %s: %w (the demo's story needs the file as examples/mesh.yaml has it)", opts.Mesh, err)
	}
	if d.dir, err = os.MkdirTemp("", "sluice-demo-"); err != nil {
		return err
	}
	defer os.RemoveAll(d.dir)
	if d.mesh, err = loadMeshFile(opts.Mesh, filepath.Join(d.dir, "mesh.yaml")); err != nil {
		return err
	}

	if d.c, err = cluster.New(); err != nil {
		return fmt.Errorf("create simulated cluster: %w", err)
	}
	defer func() {
		if err != nil {
			// A Ctrl-C reaches the pods' processes too, and a step can
			// fail from it a moment before ctx reports the interrupt.
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
			if ctx.Err() != nil {
				err = errors.New("interrupted")
			} else {
				err = fmt.Errorf("%w%s", err, d.agentLogs())
			}
		}
		err = errors.Join(err, d.teardown())
	}()

	fmt.Fprintf(d.out, "Sluice demo: a service mesh of %d nodes on this host, routed and policed in the kernel\n", len(d.cast.nodes))
	for _, step := range []func(context.Context) error{
		d.buildCluster, d.loadBalance, d.liveEdit, d.policy, d.flows, d.metrics, d.withoutAgents,
	} {
		if err := step(ctx); err != nil {
			return err
		}
	}
	return nil
}

// clientNode is the node of the clients: where the demo observes flows
// and reads metrics.
func (d *demo) clientNode() *node {
	for _, n := range d.nodes {
		if n.Name == d.cast.pod(allowedClient).node {
			return n
		}
	}
	panic("the cast has no node of " + allowedClient)
}

// header starts a step of the narration.
func (d *demo) header(format string, args ...any) {
	fmt.Fprintf(d.out, "\n"+format+"\n", args...)
}

// say prints a line of a step's result.
func (d *demo) say(format string, args ...any) {
	fmt.Fprintf(d.out, "   "+format+"\n", args...)
}

// 1. The cluster: nodes, pods, servers in them, an agent per node.
func (d *demo) buildCluster(ctx context.Context) error {
	cs := d.cast
	d.header("1) The cluster %s, simulated on this host: a node is a cgroup subtree, a pod a network namespace and a cgroup", d.c.ID)
	nodes := map[string]*cluster.Node{}
	for _, name := range cs.nodes {
		n, err := d.c.AddNode(name)
		if err != nil {
			return err
		}
		nodes[name] = n
	}
	fmt.Fprintf(d.out, "   %-7s %-10s %-12s %s\n", "NODE", "POD", "IP", "RUNS")
	for _, spec := range cs.pods {
		pod, err := nodes[spec.node].AddPod(spec.name, spec.ip)
		if err != nil {
			return err
		}
		d.pods[spec.name] = pod
		if err := d.mesh.setWorkloadCgroup(spec.name, pod.Cgroup); err != nil {
			return err
		}
		runs, err := d.startServer(ctx, pod, spec)
		if err != nil {
			return err
		}
		fmt.Fprintf(d.out, "   %-7s %-10s %-12s %s\n", spec.node, spec.name, spec.ip, runs)
	}
	if err := d.mesh.save(); err != nil {
		return err
	}

	start := time.Now()
	for _, name := range cs.nodes {
		n, err := d.startAgent(nodes[name])
		if err != nil {
			return err
		}
		d.nodes = append(d.nodes, n)
	}
	d.say("agents: `sluice agent --mesh mesh.yaml` on %s, each serving itself from an embedded control plane;", strings.Join(cs.nodes, " and "))
	d.say("        mesh.yaml is one copy of %s, with the cgroup of each pod filled in", d.opts.Mesh)
	if err := d.until(ctx, 20*time.Second, func() bool {
		for _, n := range d.nodes {
			if !n.ready() {
				return false
			}
		}
		return true
	}); err != nil {
		return fmt.Errorf("the agents did not get ready (/readyz): %w", err)
	}
	ready := time.Since(start)
	// Ready means the first state is applied; the story needs both nodes'
	// policy and the client node's routing.
	client, denied := d.pods[allowedClient], d.pods[deniedClient]
	var seen string
	if err := d.until(ctx, 20*time.Second, func() bool {
		name, err := d.curlOnce(ctx, client)
		if err != nil {
			seen = fmt.Sprintf("%s's request failed: %v", allowedClient, err)
			return false
		}
		refusal := d.connectError(ctx, denied, d.cast.webVIP)
		seen = fmt.Sprintf("%s got an answer from %s; %s's connect: %s, want Operation not permitted", allowedClient, name, deniedClient, cmp.Or(refusal, "succeeded"))
		return refusal == "Operation not permitted"
	}); err != nil {
		return fmt.Errorf("the agents did not start routing and enforcing %s's policy (%w): %s", webName, err, seen)
	}
	d.say("both agents ready (first xDS state applied) %s after start; routing and policy in force after %s",
		ready.Round(10*time.Millisecond), time.Since(start).Round(10*time.Millisecond))
	return nil
}

// startServer starts the pod's servers, if it is an endpoint, and
// describes what runs in it.
func (d *demo) startServer(ctx context.Context, pod *cluster.Pod, spec podSpec) (string, error) {
	if spec.http == 0 && spec.udp == 0 {
		tools := "curl, bash"
		if spec.name != allowedClient {
			tools = "bash"
		}
		return fmt.Sprintf("%s (client, serviceAccount %s)", tools, spec.serviceAccount), nil
	}
	args := []string{"demo-backend", "--name", spec.name}
	var serves []string
	if spec.http != 0 {
		args = append(args, "--listen", netip.AddrPortFrom(spec.ip, spec.http).String())
		serves = append(serves, fmt.Sprintf("HTTP :%d (%s)", spec.http, webName))
	}
	if spec.udp != 0 {
		args = append(args, "--udp-listen", netip.AddrPortFrom(spec.ip, spec.udp).String())
		serves = append(serves, fmt.Sprintf("UDP :%d (%s)", spec.udp, dnsName))
	}
	if err := startBackend(pod, pod.Command(ctx, d.opts.Self, args...)); err != nil {
		return "", err
	}
	return "sluice demo-backend: " + strings.Join(serves, ", "), nil
}

// 2. Load balancing across both nodes, and UDP through a VIP.
func (d *demo) loadBalance(ctx context.Context) error {
	cs := d.cast
	client := d.pods[allowedClient]
	d.header("2) Load balancing: %d requests with curl from %s to %s %s, a new connection each",
		d.opts.Requests, allowedClient, webName, cs.webVIP)
	counts, err := d.requests(ctx, client)
	if err != nil {
		return err
	}
	if err := d.printCounts(counts, func(ep mesh.Endpoint, n int) error {
		if usable(ep) != (n > 0) {
			return fmt.Errorf("%d connections went to %s (%s)", n, d.cast.podAt(ep.Address).name, endpointState(ep))
		}
		return nil
	}); err != nil {
		return err
	}
	crossed := 0
	for name, n := range counts {
		if d.cast.pod(name).node != d.cast.pod(allowedClient).node {
			crossed += n
		}
	}
	if crossed == 0 {
		return errors.New("no connection crossed to another node")
	}
	d.say("%d of %d connections crossed to another node; curl's peer (getpeername) was %s on every one", crossed, d.opts.Requests, cs.webVIP)

	out, err := client.Output(client.Command(ctx, "bash", "-c",
		fmt.Sprintf("exec 3<>/dev/udp/%s/%d && echo q >&3 && timeout 3 head -n1 <&3", cs.dnsVIP.Addr(), cs.dnsVIP.Port())))
	answer := strings.TrimSpace(string(out))
	if err != nil || d.cast.pod(answer) == nil || d.cast.pod(answer).udp == 0 {
		return fmt.Errorf("UDP to %s %s: answer %q, err %v; want one of its endpoints", dnsName, cs.dnsVIP, answer, err)
	}
	d.say("UDP: a datagram from %s to %s %s (bash /dev/udp) was answered by %s", allowedClient, dnsName, cs.dnsVIP, answer)
	return nil
}

// 3. A live edit of the mesh file shifts traffic.
func (d *demo) liveEdit(ctx context.Context) error {
	cs := d.cast
	what := fmt.Sprintf("%s draining; %s healthy, weight 2", drained, revived)
	d.header("3) Live edit of mesh.yaml: %s", what)
	err := errors.Join(
		d.mesh.setEndpoint(cs.web.Name, cs.pod(drained).ip.String(), map[string]string{"health": "draining"}),
		d.mesh.setEndpoint(cs.web.Name, cs.pod(revived).ip.String(), map[string]string{"health": "healthy", "weight": "2"}))
	if err != nil {
		return fmt.Errorf("edit mesh file: %w", err)
	}
	if err := d.mesh.save(); err != nil {
		return err
	}
	saved := time.Now()
	client := d.pods[allowedClient]
	if err := d.until(ctx, 15*time.Second, func() bool {
		name, _ := d.curlOnce(ctx, client)
		return name == revived
	}); err != nil {
		return fmt.Errorf("the edit (%s) did not take effect: %w", what, err)
	}
	d.say("in force %s after the file was saved; %d more requests:", time.Since(saved).Round(10*time.Millisecond), d.opts.Requests)
	counts, err := d.requests(ctx, client)
	if err != nil {
		return err
	}
	return d.printCounts(counts, func(ep mesh.Endpoint, n int) error {
		if usable(ep) != (n > 0) {
			return fmt.Errorf("%d connections went to %s (%s) after the edit", n, d.cast.podAt(ep.Address).name, endpointState(ep))
		}
		return nil
	})
}

// 4. The web service's policy refuses batch at connect; frontend passes.
// `sluice observe` follows the node's flows meanwhile, for step 5.
func (d *demo) policy(ctx context.Context) error {
	cs := d.cast
	d.header("4) Policy: %s admits only serviceAccount %s (policy %s in mesh.yaml)", webName, allowedClient, cs.web.Policies[0].Name)
	var err error
	if d.obs, err = d.startObserver(d.clientNode()); err != nil {
		return err
	}
	refusal := d.connectError(ctx, d.pods[deniedClient], cs.webVIP)
	if !strings.Contains(refusal, "Operation not permitted") {
		return fmt.Errorf("%s connecting to %s: %q, want Operation not permitted", deniedClient, cs.webVIP, refusal)
	}
	d.say("%-8s -> %s: connect() failed: %s (EPERM from the kernel: no packet was sent)", deniedClient, cs.webVIP, refusal)
	for range 2 {
		answer, local, err := d.curlAnswer(ctx, d.pods[allowedClient])
		if err != nil {
			return fmt.Errorf("%s -> %s: %w", allowedClient, cs.webVIP, err)
		}
		d.obs.expect = append(d.obs.expect, local)
		d.say("%-8s -> %s: answered by %s", allowedClient, cs.webVIP, answer)
	}
	return nil
}

// 5. What `sluice observe` printed while step 4 ran.
func (d *demo) flows(ctx context.Context) error {
	n := d.clientNode()
	d.header("5) Live flows: what `sluice observe -f -o table` printed on %s while step 4 ran", n.Name)
	lines, sameNode, err := d.obs.collect(ctx, d)
	if err != nil {
		return err
	}
	for _, l := range lines {
		d.say("%s", l)
	}
	d.say("(%s#default: no rule of the ALLOW policy matched %s)", d.cast.web.Policies[0].Name, deniedClient)
	if sameNode {
		d.say("(a connection within %s is recorded by both ends; the destination's rows show no VIP)", n.Name)
	}
	return nil
}

// 6. A few of the client node's metrics, checked against what the demo
// counted itself.
func (d *demo) metrics(ctx context.Context) error {
	n := d.clientNode()
	d.header("6) Metrics: a few lines of %s's /metrics (http://%s/metrics), labels abridged", n.Name, n.metrics)
	var samples []sample
	var problem error
	// The agent counts a connection when it reads its flow event; step 5
	// waited for the last ones, so this is a short wait at most.
	err := d.until(ctx, 5*time.Second, func() bool {
		body, err := n.get(ctx, "/metrics")
		if err == nil {
			samples, err = parseMetrics(body)
		}
		if err == nil {
			err = d.checkMetrics(samples)
		}
		problem = err
		return err == nil
	})
	if err != nil {
		return fmt.Errorf("%s's metrics: %w", n.Name, errors.Join(problem, err))
	}
	opened, denied := "sluice_tcp_connections_opened_total", "sluice_tcp_connections_denied_total"
	var lines []sample
	for _, ep := range d.cast.web.Endpoints {
		lines = append(lines, find(samples, opened, "reporter", "source", "source_workload", allowedClient,
			"destination_workload", d.cast.podAt(ep.Address).name)...)
	}
	lines = append(lines, find(samples, denied, "reporter", "source", "source_workload", deniedClient)...)
	for _, name := range []string{"sluice_tcp_sent_bytes_total", "sluice_tcp_received_bytes_total"} {
		lines = append(lines, find(samples, name, "reporter", "source", "source_workload", allowedClient,
			"destination_workload", drained)...)
	}
	for _, l := range lines {
		d.say("%s", l.abridged("destination_workload", "reporter", "source_workload"))
	}
	for _, l := range append(find(samples, "sluice_services"), find(samples, "sluice_xds_connected")...) {
		d.say("%s", l.abridged())
	}
	d.say("(checked: they match the connections the demo made and saw refused)")
	return nil
}

// checkMetrics compares the client node's counters with the connections
// the demo made: each answered request of the allowed client was one
// connection opened (a failed one may have opened one too), each EPERM of
// the denied client one denied.
func (d *demo) checkMetrics(samples []sample) error {
	opened, answered := 0.0, 0
	for _, ep := range d.cast.web.Endpoints {
		backend := d.cast.podAt(ep.Address).name
		got, _ := sum(samples, "sluice_tcp_connections_opened_total", "reporter", "source",
			"source_workload", allowedClient, "destination_workload", backend)
		if want := d.answered[backend]; got < float64(want) {
			return fmt.Errorf("%v connections opened from %s to %s, but %d requests were answered", got, allowedClient, backend, want)
		}
		opened += got
		answered += d.answered[backend]
	}
	if opened > float64(answered+d.failed) {
		return fmt.Errorf("%v connections opened from %s, but it made %d requests", opened, allowedClient, answered+d.failed)
	}
	got, _ := sum(samples, "sluice_tcp_connections_denied_total", "reporter", "source",
		"source_workload", deniedClient, "destination_service", webName)
	if got != float64(d.refused) {
		return fmt.Errorf("%v connections of %s denied, the demo saw %d refused", got, deniedClient, d.refused)
	}
	if v, ok := sum(samples, "sluice_xds_connected"); !ok || v != 1 {
		return fmt.Errorf("sluice_xds_connected is %v, want 1", v)
	}
	if v, ok := sum(samples, "sluice_services"); !ok || v != 2 {
		return fmt.Errorf("sluice_services is %v, want 2 (%s and %s)", v, webName, dnsName)
	}
	return nil
}

// 7. The agents stop; the datapath keeps routing and enforcing until
// `sluice uninstall` removes it.
func (d *demo) withoutAgents(ctx context.Context) error {
	cs := d.cast
	var pins []string
	for _, n := range d.nodes {
		if err := n.stop(); err != nil {
			return err
		}
		pins = append(pins, n.PinDir)
	}
	d.header("7) Agents stopped (SIGTERM): their programs stay attached, pinned in %s", strings.Join(pins, ", "))
	counts, err := d.requests(ctx, d.pods[allowedClient])
	if err != nil {
		return fmt.Errorf("routing stopped with the agents: %w", err)
	}
	var parts []string
	for _, ep := range cs.web.Endpoints {
		name := cs.podAt(ep.Address).name
		if counts[name] > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", name, counts[name]))
		}
	}
	if counts[drained] != 0 || counts[revived] == 0 {
		return fmt.Errorf("without agents, the requests went to %v; want the edited state (%s drained)", counts, drained)
	}
	d.say("%d requests from %s: %s; routing goes on with no agent running", d.opts.Requests, allowedClient, strings.Join(parts, ", "))
	if refusal := d.connectError(ctx, d.pods[deniedClient], cs.webVIP); !strings.Contains(refusal, "Operation not permitted") {
		return fmt.Errorf("without agents, %s connecting to %s: %q, want Operation not permitted", deniedClient, cs.webVIP, refusal)
	}
	d.say("%s is still refused: Operation not permitted", deniedClient)
	for _, n := range d.nodes {
		out, err := exec.CommandContext(ctx, d.opts.Self, "uninstall", "--pin-dir", n.PinDir).CombinedOutput()
		if err != nil {
			return fmt.Errorf("sluice uninstall --pin-dir %s: %v: %s", n.PinDir, err, out)
		}
	}
	if name, _ := d.curlOnce(ctx, d.pods[allowedClient]); name != "" {
		return fmt.Errorf("%s still answered (%s) after sluice uninstall", cs.webVIP, name)
	}
	d.say("`sluice uninstall --pin-dir ...` on each node: programs detached, pins removed; %s is no longer routed", cs.webVIP)
	return nil
}

// teardown stops what runs, removes the cluster and checks that nothing
// of it is left.
func (d *demo) teardown() error {
	if d.obs != nil {
		d.obs.stop()
	}
	for _, n := range d.nodes {
		_ = n.stop()
	}
	if err := d.c.Close(); err != nil {
		return fmt.Errorf("clean up: %w", err)
	}
	// The kernel destroys a deleted network namespace, and the host end
	// of its veth with it, in the background: give it a moment.
	var left []string
	deadline := time.Now().Add(10 * time.Second)
	for {
		var err error
		if left, err = cluster.Leftovers(d.c.ID); err != nil {
			return fmt.Errorf("clean up: %w", err)
		}
		if len(left) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(left) > 0 {
		return fmt.Errorf("clean up: left behind: %s", strings.Join(left, " "))
	}
	fmt.Fprintf(d.out, "\nCleaned up: nothing of cluster %s is left (no network namespace, link, cgroup or bpffs pin).\n", d.c.ID)
	return nil
}

// agentLogs returns the last lines of each agent's log, for an error.
func (d *demo) agentLogs() string {
	var b strings.Builder
	for _, n := range d.nodes {
		data, err := os.ReadFile(n.logPath)
		if err != nil {
			continue
		}
		lines := strings.Split(strings.TrimSpace(string(data)), "\n")
		fmt.Fprintf(&b, "\nlast lines of the agent log of %s:\n%s", n.Name, strings.Join(lines[max(0, len(lines)-15):], "\n"))
	}
	return b.String()
}

// until polls cond every 50 ms until it holds, limit passes or ctx ends.
func (d *demo) until(ctx context.Context, limit time.Duration, cond func() bool) error {
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("still not so after %s", limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

// curlAnswer makes one request to the web VIP from pod and returns the
// answer (the backend's name and address) and the client's address.
func (d *demo) curlAnswer(ctx context.Context, pod *cluster.Pod) (string, netip.AddrPort, error) {
	out, err := pod.Output(pod.Command(ctx, "curl", "-sS", "--max-time", "2", "-w", " %{local_port}",
		fmt.Sprintf("http://%s/", d.cast.webVIP)))
	if err != nil {
		if pod.Name == allowedClient {
			d.failed++
		}
		return "", netip.AddrPort{}, err
	}
	// "<backend> <backend addr>" from the server, then curl's -w field.
	f := strings.Fields(string(out))
	if len(f) != 3 {
		return "", netip.AddrPort{}, fmt.Errorf("unexpected answer %q", out)
	}
	port, err := strconv.ParseUint(f[2], 10, 16)
	if err != nil {
		return "", netip.AddrPort{}, fmt.Errorf("unexpected answer %q", out)
	}
	if pod.Name == allowedClient {
		d.answered[f[0]]++
	}
	return f[0] + " " + f[1], netip.AddrPortFrom(pod.IP, uint16(port)), nil
}

// curlOnce returns who answered one request to the web VIP from pod, or
// "" if the request failed.
func (d *demo) curlOnce(ctx context.Context, pod *cluster.Pod) (string, error) {
	answer, _, err := d.curlAnswer(ctx, pod)
	if err != nil {
		return "", err
	}
	return strings.Fields(answer)[0], nil
}

// connectError returns the error bash reports when connecting to addr
// from pod, or "" if the connection succeeded.
func (d *demo) connectError(ctx context.Context, pod *cluster.Pod, addr netip.AddrPort) string {
	_, err := pod.Output(pod.Command(ctx, "bash", "-c", fmt.Sprintf("exec 3<>/dev/tcp/%s/%d", addr.Addr(), addr.Port())))
	if err == nil {
		return ""
	}
	msg := err.Error()
	if i := strings.Index(msg, "connect: "); i >= 0 {
		msg = msg[i+len("connect: "):]
	}
	msg, _, _ = strings.Cut(msg, "\n")
	msg = strings.TrimSpace(msg)
	if pod.Name == deniedClient && msg == "Operation not permitted" {
		d.refused++
	}
	return msg
}

// startBackend starts a backend in its pod and waits until it listens.
func startBackend(pod *cluster.Pod, cmd *exec.Cmd) error {
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := pod.Start(cmd); err != nil {
		return err
	}
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if err == nil && line != "ready\n" {
			err = fmt.Errorf("unexpected output %q", line)
		}
		ready <- err
	}()
	select {
	case err := <-ready:
		if err != nil {
			return fmt.Errorf("backend in pod %s did not start: %w", pod.Name, err)
		}
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("backend in pod %s did not start within 10s", pod.Name)
	}
}

// requests makes opts.Requests HTTP requests to the web VIP with one curl
// process in pod, each on a new connection, and counts who answered. It
// checks that curl saw the VIP as its peer every time.
func (d *demo) requests(ctx context.Context, pod *cluster.Pod) (map[string]int, error) {
	n := d.opts.Requests
	url := fmt.Sprintf("http://%s/", d.cast.webVIP)
	args := []string{"-sS", "--max-time", "10", "-H", "Connection: close",
		"-w", " %{remote_ip}:%{remote_port} %{num_connects}\n"}
	for range n {
		args = append(args, url)
	}
	raw, err := pod.Output(pod.Command(ctx, "curl", args...))
	if err != nil {
		d.failed += n
		return nil, fmt.Errorf("curl from pod %s: %w", pod.Name, err)
	}
	counts := make(map[string]int)
	total := 0
	for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		// "<backend> <backend addr>" from the server, then curl's -w fields.
		f := strings.Fields(line)
		if len(f) != 4 {
			return nil, fmt.Errorf("unexpected curl output line %q", line)
		}
		if f[2] != d.cast.webVIP.String() || f[3] != "1" {
			return nil, fmt.Errorf("curl saw peer %s with %s new connections, want %s on a new connection", f[2], f[3], d.cast.webVIP)
		}
		if d.cast.pod(f[0]) == nil {
			return nil, fmt.Errorf("unexpected answer %q", line)
		}
		counts[f[0]]++
		total++
		if pod.Name == allowedClient {
			d.answered[f[0]]++
		}
	}
	if total != n {
		return nil, fmt.Errorf("curl reported %d answers for %d requests", total, n)
	}
	return counts, nil
}

// printCounts prints how many connections each endpoint of web got, as
// the current mesh.yaml describes it, and checks each with check.
func (d *demo) printCounts(counts map[string]int, check func(mesh.Endpoint, int) error) error {
	web, err := d.currentWeb()
	if err != nil {
		return err
	}
	for _, ep := range web.Endpoints {
		pod := d.cast.podAt(ep.Address)
		n := counts[pod.name]
		d.say("%-10s %-7s %-10s %3d  %s", pod.name, pod.node, endpointState(ep), n, strings.Repeat("#", n))
		if err := check(ep, n); err != nil {
			return err
		}
	}
	return nil
}

// currentWeb returns the web service as the copy of the mesh file now
// describes it.
func (d *demo) currentWeb() (*mesh.Service, error) {
	cs, err := readCast(d.mesh.path)
	if err != nil {
		return nil, fmt.Errorf("the demo's copy of the mesh file: %w", err)
	}
	return cs.web, nil
}

func usable(ep mesh.Endpoint) bool {
	return ep.Health == model.HealthHealthy || ep.Health == model.HealthUnknown
}

// endpointState is what the narration says of an endpoint: its weight if
// it takes new connections, else its health.
func endpointState(ep mesh.Endpoint) string {
	if usable(ep) {
		return fmt.Sprintf("weight %d", ep.Weight)
	}
	return ep.Health.String()
}
