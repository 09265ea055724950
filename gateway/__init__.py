"""When and where: configuration, intake, journal, dispatcher, CLI, logging, simulator."""
