"""Statistics that can be switched on after construction."""

from pytorch_metric_learning.utils.module_with_records import ModuleWithRecords


class StatsOnDemand(ModuleWithRecords):
    """A ``ModuleWithRecords`` that remembers the statistics it declares, so that a
    wrapper built with ``collect_stats=True`` can switch them on for the objects it
    was given (PML registers a statistic only when ``collect_stats`` is set at
    construction)."""

    def add_to_recordable_attributes(
        self, name=None, list_of_names=None, is_stat=False
    ):
        if is_stat:
            names = [name] if name is not None else []
            self._stat_names = [*getattr(self, "_stat_names", []), *names]
            self._stat_names += list(list_of_names or [])
        super().add_to_recordable_attributes(
            name=name, list_of_names=list_of_names, is_stat=is_stat
        )

    def start_collecting_stats(self):
        """Collect and record the declared statistics from now on."""
        if not self.collect_stats:
            self.collect_stats = True
            super().add_to_recordable_attributes(
                list_of_names=getattr(self, "_stat_names", []), is_stat=True
            )
