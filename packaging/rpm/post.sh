# %post: enable and start on first install ($1 = 1). The packaged configuration is dry-run,
# so starting changes nothing. Upgrades restart in %postun. Never touches networking.
systemctl daemon-reload >/dev/null 2>&1 || :
if [ "$1" -eq 1 ]; then
    systemctl enable --now enisync.service >/dev/null 2>&1 || :
fi
exit 0
