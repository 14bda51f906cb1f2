package dataplane

//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel -type sl_config -type sl_svc_key -type sl_svc_value -type sl_be_key -type sl_be_value -type sl_sock_origin -type sl_revnat_key -type sl_revnat_value -type sl_stat -type sl_cgroup_value -type sl_addr_key -type sl_policy_config -type sl_dest_key -type sl_dest_value -type sl_class_key -type sl_verdict_key -type sl_verdict -type sl_rule_stat -type sl_conn -type sl_event -type sl_event_kind service ../bpf/service.c -- -I../bpf
