# %preun: on erase ($1 = 0) stop and disable, then remove the policy rules and routes
# enisync owns (protocol 212, nothing else) while the helper is still installed.
if [ "$1" -eq 0 ]; then
    systemctl disable --now enisync.service >/dev/null 2>&1 || :
    if [ -x /usr/libexec/enisync/flush-routing ]; then
        /usr/libexec/enisync/flush-routing || :
    fi
fi
exit 0
