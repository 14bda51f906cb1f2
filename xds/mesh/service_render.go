package mesh

// Render renders s alone, as Mesh.Resources renders it within a mesh of
// trust domain trustDomain: for each of its ports a listener, a cluster and
// a cluster load assignment, each slice sorted by name. s must be valid as
// Parse returns it: VIPs, ports and endpoints consistent, policy names
// unique. Render does not modify s, so services can be rendered one at a
// time, as a control plane that follows changes of single services does.
func (s *Service) Render(trustDomain string) Resources {
	var r Resources
	s.render(&r, trustDomain)
	r.sort()
	return r
}

// render appends the resources of s's ports to r.
func (s *Service) render(r *Resources, trustDomain string) {
	for _, p := range s.Ports {
		name := s.ResourceName(p)
		r.Listeners = append(r.Listeners, listener(name, s, p, trustDomain))
		r.Clusters = append(r.Clusters, cluster(name))
		r.Endpoints = append(r.Endpoints, assignment(name, s.Endpoints, p))
	}
}
