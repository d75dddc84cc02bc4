package k8s

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer/protobuf"
	"k8s.io/client-go/kubernetes/scheme"
)

func podListForDecode(n int) *corev1.PodList {
	list := &corev1.PodList{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "PodList"},
		ListMeta: metav1.ListMeta{ResourceVersion: "12345", Continue: "next-page"},
	}
	for i := range n {
		list.Items = append(list.Items, corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("p%d", i), Namespace: "ns", UID: "u",
				Annotations: map[string]string{"big": strings.Repeat("x", 5000)}},
			Spec: corev1.PodSpec{NodeName: "n", Containers: []corev1.Container{{Name: "c", Image: "i"}}},
			Status: corev1.PodStatus{PodIPs: []corev1.PodIP{{IP: fmt.Sprintf("10.0.%d.%d", i/256, i%256)}},
				Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
		})
	}
	return list
}

var podKind = listKind{resource: "pods", kind: "PodList",
	newItem: func() protoObject { return &corev1.Pod{} }, newList: func() runtime.Object { return &corev1.PodList{} }, transform: transformPod}

func wantCompact(t *testing.T, list *corev1.PodList) []runtime.Object {
	var out []runtime.Object
	for i := range list.Items {
		o, err := transformPod(&list.Items[i])
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, o.(runtime.Object))
	}
	return out
}

func TestDecodeListProtobuf(t *testing.T) {
	list := podListForDecode(300)
	var buf bytes.Buffer
	if err := protobuf.NewSerializer(scheme.Scheme, scheme.Scheme).Encode(list, &buf); err != nil {
		t.Fatal(err)
	}
	encoded := buf.Bytes()
	got, err := decodeList(bytes.NewReader(encoded), podKind)
	if err != nil {
		t.Fatal(err)
	}
	if got.ResourceVersion != "12345" || got.Continue != "next-page" || !reflect.DeepEqual(got.Items, wantCompact(t, list)) {
		t.Errorf("decoded list differs: rv %q continue %q, %d items", got.ResourceVersion, got.Continue, len(got.Items))
	}
	// Read in tiny chunks, as a slow network delivers it.
	got, err = decodeList(iotestOneByte(encoded), podKind)
	if err != nil || len(got.Items) != 300 {
		t.Errorf("one byte at a time: %v, %d items", err, len(got.Items))
	}
	// Truncated anywhere: an error, never a short list.
	for _, cut := range []int{5, 100, len(encoded) / 2, len(encoded) - 1} {
		if got, err := decodeList(bytes.NewReader(encoded[:cut]), podKind); err == nil {
			t.Errorf("truncated at %d of %d: no error, %d items", cut, len(encoded), len(got.Items))
		}
	}
	// Another kind than asked for.
	svcKind := podKind
	svcKind.kind = "ServiceList"
	if _, err := decodeList(bytes.NewReader(encoded), svcKind); err == nil || !strings.Contains(err.Error(), "PodList") {
		t.Errorf("wrong kind: %v", err)
	}
	// An empty list.
	buf.Reset()
	if err := protobuf.NewSerializer(scheme.Scheme, scheme.Scheme).Encode(&corev1.PodList{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "PodList"}}, &buf); err != nil {
		t.Fatal(err)
	}
	if got, err := decodeList(&buf, podKind); err != nil || len(got.Items) != 0 {
		t.Errorf("empty list: %v, %+v", err, got)
	}
}

func TestDecodeListJSON(t *testing.T) {
	list := podListForDecode(20)
	data, err := json.Marshal(list)
	if err != nil {
		t.Fatal(err)
	}
	got, err := decodeList(bytes.NewReader(data), podKind)
	if err != nil {
		t.Fatal(err)
	}
	if got.ResourceVersion != "12345" || got.Continue != "next-page" || !reflect.DeepEqual(got.Items, wantCompact(t, list)) {
		t.Errorf("decoded JSON list differs: %+v", got)
	}
	if _, err := decodeList(strings.NewReader("{not json"), podKind); err == nil {
		t.Error("bad JSON accepted")
	}
}

func TestCompactDeepCopy(t *testing.T) {
	list := podListForDecode(2)
	c := &compactList{ListMeta: list.ListMeta, Items: wantCompact(t, list)}
	d := c.DeepCopyObject().(*compactList)
	if !reflect.DeepEqual(c, d) {
		t.Error("deep copy differs")
	}
	d.Items[0].(*podInfo).ips[0] = d.Items[1].(*podInfo).ips[0]
	if reflect.DeepEqual(c, d) {
		t.Error("deep copy shares slices")
	}
	for _, o := range []runtime.Object{&svcInfo{}, &sliceInfo{endpoints: []sliceEndpoint{{}}}, &ownerInfo{}} {
		if !reflect.DeepEqual(o, o.DeepCopyObject()) {
			t.Errorf("%T deep copy differs", o)
		}
	}
}

type oneByteReader struct{ r io.Reader }

func (o oneByteReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	return o.r.Read(p[:1])
}

func iotestOneByte(b []byte) io.Reader { return oneByteReader{bytes.NewReader(b)} }
