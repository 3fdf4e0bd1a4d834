"""mergekit's planner run without merging (mergekit as in :data:`mergekit_expo.hosts.SUPPORTED`):
it needs the merged model's config, which ``run_merge`` builds with a private function."""


def model_out_config(merge_config, arch_info, *, trust_remote_code: bool = False):
    """The config ``run_merge`` gives the merged model of ``merge_config``."""
    from mergekit.merge import _model_out_config

    return _model_out_config(merge_config, arch_info, trust_remote_code=trust_remote_code)
