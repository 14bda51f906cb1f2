package kube

import (
	"context"
	"slices"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
)

// ConditionAccepted is the MeshPolicy status condition that says whether
// the policy is valid and served.
const ConditionAccepted = "Accepted"

// Reasons of the Accepted condition.
const (
	ReasonAccepted = "Accepted"
	ReasonInvalid  = "Invalid"
)

// meshPolicyStatus is the status of a MeshPolicy as stored.
type meshPolicyStatus struct {
	ObservedGeneration int64              `json:"observedGeneration,omitempty"`
	Conditions         []metav1.Condition `json:"conditions,omitempty"`
	CoveredServices    []string           `json:"coveredServices,omitempty"`
}

// writeStatus writes st as the status of obj through the status
// subresource, unless obj already has it. A conflict is left to the
// informer: the newer object it delivers marks the policy again.
func (s *Server) writeStatus(ctx context.Context, obj *unstructured.Unstructured, st PolicyStatus) {
	var cur meshPolicyStatus
	if raw, ok, _ := unstructured.NestedMap(obj.Object, "status"); ok {
		_ = runtime.DefaultUnstructuredConverter.FromUnstructured(raw, &cur)
	}
	next := meshPolicyStatus{ObservedGeneration: st.Generation, Conditions: slices.Clone(cur.Conditions), CoveredServices: st.Covered}
	cond := metav1.Condition{
		Type:               ConditionAccepted,
		Status:             metav1.ConditionTrue,
		Reason:             ReasonAccepted,
		Message:            st.Message,
		ObservedGeneration: st.Generation,
	}
	if !st.Accepted {
		cond.Status, cond.Reason = metav1.ConditionFalse, ReasonInvalid
	}
	// SetStatusCondition keeps the transition time unless the status
	// changes.
	meta.SetStatusCondition(&next.Conditions, cond)
	if statusEqual(&cur, &next) {
		return
	}
	raw, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&next)
	if err != nil {
		s.log.Error("meshpolicy status", "policy", key(st.Namespace, st.Name), "error", err.Error())
		return
	}
	u := obj.DeepCopy()
	u.Object["status"] = raw
	_, err = s.dyn.Resource(MeshPolicyResource).Namespace(st.Namespace).UpdateStatus(ctx, u, metav1.UpdateOptions{})
	switch {
	case err == nil:
		s.log.Debug("meshpolicy status written", "policy", key(st.Namespace, st.Name), "accepted", st.Accepted, "covered", len(st.Covered))
	case apierrors.IsConflict(err), apierrors.IsNotFound(err), ctx.Err() != nil:
		// A newer version, or none: the informer brings it.
	default:
		s.log.Error("write meshpolicy status", "policy", key(st.Namespace, st.Name), "error", err.Error())
	}
}

// statusEqual compares statuses as stored, transition times included.
func statusEqual(a, b *meshPolicyStatus) bool {
	if a.ObservedGeneration != b.ObservedGeneration || !slices.Equal(a.CoveredServices, b.CoveredServices) ||
		len(a.Conditions) != len(b.Conditions) {
		return false
	}
	for i := range a.Conditions {
		x, y := a.Conditions[i], b.Conditions[i]
		if x.Type != y.Type || x.Status != y.Status || x.Reason != y.Reason || x.Message != y.Message ||
			x.ObservedGeneration != y.ObservedGeneration || !x.LastTransitionTime.Equal(&y.LastTransitionTime) {
			return false
		}
	}
	return true
}
