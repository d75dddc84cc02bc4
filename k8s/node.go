package k8s

// Node is the name of the node this resolver runs on.
func (r *Resolver) Node() string { return r.cfg.Node }
