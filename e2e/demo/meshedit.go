package demo

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"

	"gopkg.in/yaml.v3"
)

// meshFile is a mesh file the demo edits in place, keeping its comments,
// the way a person would with an editor.
type meshFile struct {
	path string
	doc  yaml.Node
}

func loadMeshFile(src, dst string) (*meshFile, error) {
	data, err := os.ReadFile(src)
	if err != nil {
		return nil, err
	}
	m := &meshFile{path: dst}
	if err := yaml.Unmarshal(data, &m.doc); err != nil {
		return nil, fmt.Errorf("%s: %w", src, err)
	}
	return m, m.save()
}

// save writes the file atomically (write and rename), as editors do.
func (m *meshFile) save() error {
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(&m.doc); err != nil {
		return err
	}
	tmp := filepath.Join(filepath.Dir(m.path), ".mesh.yaml.tmp")
	if err := os.WriteFile(tmp, buf.Bytes(), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, m.path)
}

// services returns the services sequence node.
func (m *meshFile) services() (*yaml.Node, error) {
	if len(m.doc.Content) == 0 {
		return nil, fmt.Errorf("%s is empty", m.path)
	}
	if s := value(m.doc.Content[0], "services"); s != nil && s.Kind == yaml.SequenceNode {
		return s, nil
	}
	return nil, fmt.Errorf("%s has no services list", m.path)
}

// setEndpoint sets fields of the endpoint with the given address of
// service name (e.g. health: draining).
func (m *meshFile) setEndpoint(service, address string, fields map[string]string) error {
	svcs, err := m.services()
	if err != nil {
		return err
	}
	for _, s := range svcs.Content {
		if scalar(value(s, "name")) != service {
			continue
		}
		for _, ep := range value(s, "endpoints").Content {
			if scalar(value(ep, "address")) != address {
				continue
			}
			for k, v := range fields {
				set(ep, k, v)
			}
			return nil
		}
	}
	return fmt.Errorf("no endpoint %s in service %s", address, service)
}

// setWorkloadCgroup sets the cgroup of the workload named name in the
// workloads section.
func (m *meshFile) setWorkloadCgroup(name, cgroup string) error {
	if len(m.doc.Content) == 0 {
		return fmt.Errorf("%s is empty", m.path)
	}
	if ws := value(m.doc.Content[0], "workloads"); ws != nil && ws.Kind == yaml.SequenceNode {
		for _, w := range ws.Content {
			if scalar(value(w, "name")) == name {
				set(w, "cgroup", cgroup)
				return nil
			}
		}
	}
	return fmt.Errorf("no workload %s in the workloads section", name)
}

func value(mapping *yaml.Node, key string) *yaml.Node {
	if mapping == nil || mapping.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(mapping.Content); i += 2 {
		if mapping.Content[i].Value == key {
			return mapping.Content[i+1]
		}
	}
	return nil
}

func scalar(n *yaml.Node) string {
	if n == nil {
		return ""
	}
	return n.Value
}

func set(mapping *yaml.Node, key, v string) {
	if n := value(mapping, key); n != nil {
		n.Kind, n.Tag, n.Value, n.Content = yaml.ScalarNode, "", v, nil
		return
	}
	mapping.Content = append(mapping.Content,
		&yaml.Node{Kind: yaml.ScalarNode, Value: key},
		&yaml.Node{Kind: yaml.ScalarNode, Value: v})
}
