package demo

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os/exec"
	"sort"
	"strings"
	"time"

	"github.com/sluice-mesh/sluice/dataplane"
	"github.com/sluice-mesh/sluice/dataplane/model"
	"github.com/sluice-mesh/sluice/e2e/cluster"
)

// Options configures Run.
type Options struct {
	Out      io.Writer // required: where the demo reports
	Self     string    // required: path of the sluice binary (runs the backends)
	Requests int       // optional: requests per phase, default 40
}

type backend struct {
	name   string
	ip     netip.Addr
	weight uint32
	pod    *cluster.Pod
}

const (
	vip      = "10.96.0.10"
	vipPort  = 80
	bePort   = 8080
	curlPath = "curl"
)

// Run builds a one-node cluster with a client pod and three backend pods,
// routes a service VIP to the backends through the kernel dataplane, and
// shows with curl how weights, health and an empty service behave. It checks
// what it shows and returns an error if the dataplane misbehaves. Everything
// it creates is removed before it returns.
func Run(ctx context.Context, opts Options) (err error) {
	if opts.Requests == 0 {
		opts.Requests = 40
	}
	out := opts.Out
	if _, err := exec.LookPath(curlPath); err != nil {
		return errors.New("the demo needs curl: apt-get install curl")
	}

	c, err := cluster.New()
	if err != nil {
		return fmt.Errorf("create simulated cluster: %w", err)
	}
	defer func() {
		if cerr := c.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("clean up: %w", cerr))
		} else {
			fmt.Fprintln(out, "\nCleaned up: dataplane torn down; pods, bridge and cgroups removed.")
		}
	}()
	node, err := c.AddNode("node-1")
	if err != nil {
		return err
	}
	client, err := node.AddPod("client", netip.MustParseAddr("10.244.0.2"))
	if err != nil {
		return err
	}
	backends := []*backend{
		{name: "backend-a", ip: netip.MustParseAddr("10.244.0.11"), weight: 1},
		{name: "backend-b", ip: netip.MustParseAddr("10.244.0.12"), weight: 3},
		{name: "backend-c", ip: netip.MustParseAddr("10.244.0.13"), weight: 1},
	}
	for _, b := range backends {
		if b.pod, err = node.AddPod(b.name, b.ip); err != nil {
			return err
		}
		if err := startBackend(ctx, opts.Self, b); err != nil {
			return err
		}
	}

	dp, err := dataplane.Open(dataplane.Options{PinDir: node.PinDir, Cgroup: node.Cgroup})
	if err != nil {
		return fmt.Errorf("open dataplane: %w", err)
	}
	defer dp.Close()

	fmt.Fprintf(out, "Sluice demo: connect-time service routing in the kernel\n\n")
	fmt.Fprintf(out, "Simulated cluster %s, node-1 = cgroup %s\n", c.ID, node.Cgroup)
	fmt.Fprintf(out, "  pod %-10s %s (runs curl)\n", client.Name, client.IP)
	for _, b := range backends {
		fmt.Fprintf(out, "  pod %-10s %s:%d (HTTP server)\n", b.name, b.ip, bePort)
	}
	fmt.Fprintf(out, "Dataplane pinned at %s, programs attached to node-1's cgroup\n", node.PinDir)

	health := map[string]model.Health{"backend-a": model.HealthHealthy, "backend-b": model.HealthHealthy, "backend-c": model.HealthUnhealthy}
	apply := func() error {
		s := model.Service{Name: "demo/web", VIP: netip.MustParseAddr(vip), Port: vipPort, Protocol: model.TCP}
		for _, b := range backends {
			s.Endpoints = append(s.Endpoints, model.Endpoint{Addr: b.ip, Port: bePort, Weight: b.weight, Health: health[b.name]})
		}
		return dp.Apply(model.State{Services: []model.Service{s}})
	}
	describe := func() string {
		var parts []string
		for _, b := range backends {
			parts = append(parts, fmt.Sprintf("%s (weight %d, %s)", b.name, b.weight, health[b.name]))
		}
		return strings.Join(parts, ", ")
	}

	// 1. Weighted choice among healthy endpoints.
	if err := apply(); err != nil {
		return err
	}
	fmt.Fprintf(out, "\n1) Service demo/web %s:%d -> %s\n", vip, vipPort, describe())
	counts, err := requests(ctx, client, opts.Requests, out)
	if err != nil {
		return err
	}
	if counts["backend-c"] != 0 || counts["backend-a"] == 0 || counts["backend-b"] == 0 {
		return fmt.Errorf("phase 1: unexpected distribution %v (backend-c is unhealthy; a and b should both answer)", counts)
	}

	// 2. An endpoint turns unhealthy: new connections avoid it.
	health["backend-b"] = model.HealthUnhealthy
	if err := apply(); err != nil {
		return err
	}
	fmt.Fprintf(out, "\n2) backend-b reported unhealthy -> %s\n", describe())
	if counts, err = requests(ctx, client, opts.Requests, out); err != nil {
		return err
	}
	if counts["backend-a"] != opts.Requests {
		return fmt.Errorf("phase 2: want every request on backend-a, got %v", counts)
	}

	// 3. No usable endpoint: connect fails at once instead of timing out.
	health["backend-a"] = model.HealthUnhealthy
	if err := apply(); err != nil {
		return err
	}
	fmt.Fprintf(out, "\n3) backend-a unhealthy too: no usable endpoint\n")
	start := time.Now()
	cmd := client.Command(ctx, curlPath, "-sS", "--max-time", "5", fmt.Sprintf("http://%s:%d/", vip, vipPort))
	_, cerr := client.Output(cmd)
	var exit *exec.ExitError
	if !errors.As(cerr, &exit) || exit.ExitCode() != 7 {
		return fmt.Errorf("phase 3: want curl to fail to connect (exit 7), got %v", cerr)
	}
	fmt.Fprintf(out, "   %s\n   refused by connect() after %s, no packet sent (exit code 7, not a timeout)\n",
		lastLine(cerr.Error()), time.Since(start).Round(time.Millisecond))

	if err := dp.Teardown(); err != nil {
		return fmt.Errorf("teardown: %w", err)
	}
	return nil
}

// startBackend runs `sluice demo-backend` in the backend's pod and waits
// until it listens.
func startBackend(ctx context.Context, self string, b *backend) error {
	cmd := b.pod.Command(ctx, self, "demo-backend", "--name", b.name, "--listen", fmt.Sprintf("%s:%d", b.ip, bePort))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := b.pod.Start(cmd); err != nil {
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
			return fmt.Errorf("backend %s did not start: %w", b.name, err)
		}
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("backend %s did not start within 10s", b.name)
	}
}

// requests makes n HTTP requests to the VIP with one curl process from the
// client pod, each on a new connection, and counts who answered. It checks
// that curl saw the VIP as its peer every time.
func requests(ctx context.Context, client *cluster.Pod, n int, out io.Writer) (map[string]int, error) {
	url := fmt.Sprintf("http://%s:%d/", vip, vipPort)
	args := []string{"-sS", "--max-time", "10", "-H", "Connection: close",
		"-w", " %{remote_ip}:%{remote_port} %{num_connects}\n"}
	for range n {
		args = append(args, url)
	}
	raw, err := client.Output(client.Command(ctx, curlPath, args...))
	if err != nil {
		return nil, fmt.Errorf("curl from pod client: %w", err)
	}
	counts := make(map[string]int)
	for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		// "<backend> <backend addr>" from the server, then curl's -w fields.
		f := strings.Fields(line)
		if len(f) != 4 {
			return nil, fmt.Errorf("unexpected curl output line %q", line)
		}
		if want := fmt.Sprintf("%s:%d", vip, vipPort); f[2] != want || f[3] != "1" {
			return nil, fmt.Errorf("curl saw peer %s with %s new connections, want %s on a new connection", f[2], f[3], want)
		}
		counts[f[0]]++
	}
	total := 0
	names := make([]string, 0, len(counts))
	for name, k := range counts {
		names = append(names, name)
		total += k
	}
	if total != n {
		return nil, fmt.Errorf("curl reported %d answers for %d requests", total, n)
	}
	sort.Strings(names)
	fmt.Fprintf(out, "   %d requests with curl from pod client, one new connection each:\n", n)
	for _, name := range []string{"backend-a", "backend-b", "backend-c"} {
		fmt.Fprintf(out, "     %-10s %3d  %s\n", name, counts[name], strings.Repeat("#", counts[name]))
	}
	fmt.Fprintf(out, "   curl's peer address (getpeername) was %s:%d on every connection\n", vip, vipPort)
	return counts, nil
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndex(s, "\n"); i >= 0 {
		return s[i+1:]
	}
	if i := strings.Index(s, ": "); i >= 0 {
		return s[i+2:]
	}
	return s
}
