// Command kstatus prints the status that kstatus (sigs.k8s.io/cli-utils/pkg/kstatus/status) computes
// for one object — what Flux and kstatus-based pipelines decide from: InProgress, Current, Failed,
// Terminating, NotFound or Unknown.
//
//	kstatus -kubeconfig FILE [-n NAMESPACE] RESOURCE.VERSION.GROUP/NAME   a live object
//	kstatus -f FILE                                                        an object in a YAML or JSON file
//
// e.g. `kstatus -kubeconfig kubeconfig -n team-a finetunejobs.v1alpha1.kubetune.io/triage`.
// The status goes to stdout, kstatus' message to stderr; exit status 2 on bad arguments, 1 on
// any other error. Built by cluster/build-kstatus.sh.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/yaml"
)

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the API server to read the object from")
	namespace := flag.String("n", "default", "namespace of the object")
	file := flag.String("f", "", "read the object from this YAML/JSON file instead of an API server")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: kstatus -kubeconfig FILE [-n NAMESPACE] RESOURCE.VERSION.GROUP/NAME | kstatus -f FILE")
		flag.PrintDefaults()
	}
	flag.Parse()

	var obj *unstructured.Unstructured
	var err error
	switch {
	case *file != "" && flag.NArg() == 0:
		obj, err = fromFile(*file)
	case *file == "" && *kubeconfig != "" && flag.NArg() == 1:
		obj, err = fromServer(*kubeconfig, *namespace, flag.Arg(0))
	default:
		flag.Usage()
		os.Exit(2)
	}
	if apierrors.IsNotFound(err) {
		fmt.Println(status.NotFoundStatus)
		fmt.Fprintln(os.Stderr, err)
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "kstatus:", err)
		os.Exit(1)
	}
	res, err := status.Compute(obj)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kstatus:", err)
		os.Exit(1)
	}
	fmt.Println(res.Status)
	fmt.Fprintln(os.Stderr, res.Message)
}

func fromFile(path string) (*unstructured.Unstructured, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	// through JSON, as the API server's client decodes it: whole numbers as int64
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	obj := &unstructured.Unstructured{}
	if err := obj.UnmarshalJSON(js); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return obj, nil
}

// fromServer reads RESOURCE.VERSION.GROUP/NAME (kubectl's fully qualified form) in namespace.
func fromServer(kubeconfig, namespace, ref string) (*unstructured.Unstructured, error) {
	resource, name, ok := strings.Cut(ref, "/")
	parts := strings.SplitN(resource, ".", 3)
	if !ok || name == "" || len(parts) != 3 {
		return nil, fmt.Errorf("%q is not RESOURCE.VERSION.GROUP/NAME", ref)
	}
	config, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, err
	}
	client, err := dynamic.NewForConfig(config)
	if err != nil {
		return nil, err
	}
	gvr := schema.GroupVersionResource{Group: parts[2], Version: parts[1], Resource: parts[0]}
	return client.Resource(gvr).Namespace(namespace).Get(context.Background(), name, metav1.GetOptions{})
}
